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
    ],
    extras_require={
        # The example's data: scikit-learn ships the UCI handwritten digits.
        "examples": ["scikit-learn>=1.3"],
        # importlib_resources: what TFDS needs to build the tests' tiny dataset.
        "test": ["pytest>=8", "scikit-learn>=1.3", "importlib_resources"],
    },
)
