from setuptools import find_packages, setup

setup(
    name="mosaic-bert",
    version="0.1.0",
    description="MosaicBERT as a Hugging Face transformers remote-code model, with pretraining and GLUE tools",
    packages=find_packages(include=["mosaic_bert", "mosaic_bert.*"]),
    package_data={"mosaic_bert.train": ["recipes/*.yaml"]},
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            "mosaic-bert-pretrain = mosaic_bert.train.cli:main",
            "mosaic-bert-train-tokenizer = mosaic_bert.train.cli:train_tokenizer_main",
            "mosaic-bert-push-to-hub = mosaic_bert.train.cli:push_to_hub_main",
            "mosaic-bert-prepare-data = mosaic_bert.train.prepare:main",
            "mosaic-bert-glue = mosaic_bert.glue.cli:main",
        ],
    },
    install_requires=[
        "torch>=2.4",
        "transformers>=5.17,<6",
        "safetensors",
        "huggingface_hub",
    ],
    extras_require={
        "train": [
            "accelerate>=1.0",
            "filelock>=3.12",
            "datasets>=3.0",
            "tokenizers",
            "pyyaml",
            "tqdm",
            "matplotlib",
            "evaluate",
            "scikit-learn",
            "scipy",
        ],
        "triton": ["triton>=3.0"],
        # parameterized: transformers' common model tests (tests/modeling/test_transformers_common.py) import it;
        # onnx, onnxruntime, onnxscript: the ONNX export test (torch.onnx.export(..., dynamo=True))
        "dev": ["pytest", "triton>=3.0", "peft>=0.21", "parameterized", "onnx", "onnxruntime", "onnxscript"],
    },
)
