from setuptools import find_packages, setup

setup(
    name="bitkeras",
    version="0.1.0",
    description="Big Transfer (BiT) ResNet-v2 models and fine-tuning for Keras 3",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["bitkeras", "bitkeras.*"]),
    python_requires=">=3.11",
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "keras>=3.10",
        "numpy>=1.26",
        # Reads image headers cheaply, and decodes what tf.io cannot (palette BMP, TIFF).
        "pillow>=10",
        # "tfds:NAME" data for fit/evaluate.
        "tensorflow-datasets>=4.9",
        # The bundled downstream data (the UCI handwritten digits scikit-learn ships).
        "scikit-learn>=1.3",
        # report.png, and the fonts the upstream glyphs are rendered from.
        "matplotlib>=3.7",
        # TF-Hub handles (resolution and cache); tensorflow_hub imports tf_keras.
        "tensorflow-hub>=0.16",
        "tf-keras>=2.21,<2.22",
        # tensorflow_hub 0.16.1 imports pkg_resources, gone in setuptools 82
        # (tensorflow/hub#934).
        "setuptools<82",
    ],
    extras_require={
        # importlib_resources: what TFDS needs to build the tests' tiny dataset.
        "test": ["pytest>=8", "importlib_resources"],
    },
    entry_points={"console_scripts": ["bitkeras = bitkeras.cli:main"]},
)
