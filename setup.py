from setuptools import find_packages, setup

setup(
    name="fairseq-hashee",
    version="0.1.0",
    description="Hash-based early exiting (HashEE) for fairseq sequence-to-sequence summarization",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["fairseq_hashee", "fairseq_hashee.*"]),
    python_requires=">=3.8",
    install_requires=[
        "torch>=2.0",
        # fairseq 0.12.2 does not import on Python >= 3.11 (dataclass mutable
        # defaults); fairseq-fixed is the same code with that fixed.
        'fairseq==0.12.2; python_version < "3.11"',
        'fairseq-fixed==0.12.3.1; python_version >= "3.11"',
        "numpy",
        "sentencepiece",
        "rouge-score",
        "jieba",
    ],
    # transformers is a test-only oracle (checkpoint conversion, WordPiece);
    # hypothesis drives the fuzz tests; ruff lints and checks the layout, import-linter the
    # package's layers (make lint).
    # matplotlib only draws the benchmark's --plot.
    extras_require={
        "test": ["pytest", "pytest-xdist", "transformers", "hypothesis", "ruff", "import-linter"],
        "bench": ["matplotlib"],
    },
    entry_points={
        "console_scripts": [
            "hashee-rouge=fairseq_hashee.cli.rouge:main",
            "hashee-sample-data=fairseq_hashee.cli.sample_data:main",
            "hashee-spm=fairseq_hashee.cli.spm:main",
            "hashee-table=fairseq_hashee.cli.table:main",
            "hashee-convert=fairseq_hashee.cli.convert:main",
            "hashee-benchmark=fairseq_hashee.cli.benchmark:main",
            "hashee-compare=fairseq_hashee.cli.compare:main",
            "hashee-calibrate=fairseq_hashee.cli.calibrate:main",
            "hashee-wordpiece=fairseq_hashee.cli.wordpiece:console_main",
            "hashee-prepare=fairseq_hashee.cli.prepare:main",
            "hashee-gpt2-bpe=fairseq_hashee.cli.gpt2_bpe:main",
        ]
    },
)
