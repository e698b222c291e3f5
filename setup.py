from setuptools import find_packages, setup

setup(
    name="bitkeras",
    version="0.1.0",
    description="Big Transfer (BiT) ResNet-v2 models and fine-tuning for Keras 3",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    # The models bitkeras ships live in the top-level saved_models/ and install as
    # the package bitkeras.saved_models, so a wheel carries them.
    packages=find_packages(include=["bitkeras", "bitkeras.*"]) + ["bitkeras.saved_models"],
    package_dir={"bitkeras.saved_models": "saved_models"},
    # native_ops.cc (bitkeras.models.native) is built on first use, against the TensorFlow
    # installed then.
    package_data={"bitkeras.saved_models": ["*/model.npz", "*/MODEL_CARD.md", "*/upstream.json"],
                  "bitkeras.models": ["*.cc"]},
    python_requires=">=3.11",
    install_requires=[
        # Checked on 2.20 and 2.21 (compat.TENSORFLOW_CHECKED: the whole suite passes on each).
        "tensorflow>=2.20,<2.22",
        # 3.15 is what keras-hub 0.31 and 0.32 need; the upper bound because bitkeras uses a few
        # private Keras APIs, all in bitkeras/compat.py and checked on 3.15 (its
        # KERAS_CHECKED; a test keeps this pin and that list in step).
        "keras>=3.15,<3.16",
        # Where Keras users find pretrained vision models: BiTBackbone is one of its
        # FeaturePyramidBackbones (presets, detection tasks); the whole suite passes on
        # 0.31 and 0.32.
        "keras-hub>=0.31,<0.33",
        "numpy>=1.26",
        # keras.applications' weight files (legacy .h5 and .weights.h5) for the ResNet family.
        "h5py>=3.10",
        # Reads image headers cheaply, and decodes what tf.io cannot or does not show as a
        # viewer would (palette BMP, TIFF, 16-bit grey, JPEGs turned by their EXIF tag).
        "pillow>=10",
        # "tfds:NAME" data for fit/evaluate.
        "tensorflow-datasets>=4.9",
        # The bundled downstream data (the UCI handwritten digits scikit-learn ships).
        "scikit-learn>=1.3",
        # report.png, and the fonts the upstream glyphs are rendered from.
        "matplotlib>=3.7",
        # BiT weights as timm and transformers publish them: the Hugging Face Hub's client
        # (its cache, offline mode, the `hf download` command) and the safetensors format
        # (read without pickle).
        "huggingface_hub>=0.34",
        "safetensors>=0.4",
        # kaggle:// handles: Kaggle Models, where tfhub.dev's BiT modules moved (keras-hub
        # needs it too).
        "kagglehub>=0.3",
        # COCO average precision of detectors: the reference implementation detection
        # results are reported with.
        "pycocotools>=2.0.7",
        # Keras's TensorBoard callback, which the README says works in fit as in Keras:
        # TensorFlow 2.21 no longer brings tensorboard, and the callback fails without it.
        "tensorboard",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            # The README's test command runs the suite on every CPU (-n auto).
            "pytest-xdist>=3",
            # What TFDS needs to build the tests' tiny dataset.
            "importlib_resources",
            # The Keras 2 clients the exports are tested with (hub.load, hub.KerasLayer).
            "tensorflow-hub>=0.16",
            "tf-keras>=2.20,<2.22",
            # tensorflow_hub 0.16.1 imports pkg_resources, gone in setuptools 82
            # (tensorflow/hub#934); only the tests import tensorflow_hub. 70.1 and later
            # build wheels without the wheel package (the packaging test builds one).
            "setuptools>=70.1,<82",
            # Building the models under Keras's JAX backend.
            "jax",
            # Property-based tests of the data sources (random files and arrays).
            "hypothesis>=6",
            # keras-hub's published test harness (keras_hub.src.tests.test_case), which the
            # tests run on bitkeras's backbones as keras-hub runs it on its own, imports it.
            "grain",
            # Drives a headless Chromium (Debian's; playwright's own download is not used) to
            # check that every page of the built site renders, offline (tests/test_docs.py).
            "playwright>=1.40",
        ],
        "docs": [
            # The documentation site (mkdocs.yml): MkDocs reads the guide's Markdown as it
            # is, and mkdocstrings builds the API reference from the docstrings.
            "mkdocs>=1.6",
            "mkdocstrings[python]>=0.26",
        ],
    },
    entry_points={"console_scripts": ["bitkeras = bitkeras.jobs.cli:main"]},
)
