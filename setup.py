"""CornerNet deploy: train CornerNet (HourglassNet-104), export to ONNX with a CornerPool custom op,
run it in TensorRT through our own plugin, and verify COCO mAP against PyTorch."""

from setuptools import find_packages, setup

setup(
    name="cornernet-deploy",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.10",
    packages=find_packages(include=["trainer*", "export*", "trt_plugins*", "runtime*"]),
    package_data={"trt_plugins": ["CMakeLists.txt", "cornerPoolPlugin/*", "cmake/*"]},
    install_requires=[
        # torch: CI and CPU machines install the CPU build as `torch==2.13.0` before this package.
        "torch>=2.13,<2.14",
        "numpy>=1.26,<3",
        # Compiles the host post-processing (runtime/*_fast.py); 0.68 needs numpy < 2.6.
        "numba>=0.68,<0.69",
        "opencv-python-headless>=4.10,<6",
        "onnx>=1.23,<1.24",
        "onnxscript>=0.7.2,<0.8",
        "onnxconverter-common>=1.16,<1.17",
        # CPU ONNX Runtime by default. For GPU: `pip uninstall -y onnxruntime && pip install onnxruntime-gpu`.
        # Never install both: they share the import name.
        "onnxruntime>=1.31,<1.32",
        "pycocotools>=2.0.11,<2.1",
        "faster-coco-eval>=1.8,<1.9",
        "tqdm>=4.66,<5",
        "tensorboard>=2.21,<2.22",
    ],
    extras_require={
        # cmake: the plugin tests build the kernels with trt_plugins/CMakeLists.txt (wherever nvcc exists).
        "dev": ["pytest>=8", "pytest-xdist>=3.8", "ruff>=0.17", "hypothesis>=6.100", "mypy>=1.10", "cmake>=3.24"],
        # GPU deployment. TensorRT's PyPI packages download NVIDIA's libraries from NVIDIA's own index.
        "gpu": [
            "tensorrt>=10.0,<12", "cuda-python>=12.6", "nvidia-cuda-nvcc", "nvidia-cuda-runtime", "nvidia-cuda-cccl",
            "cmake>=3.24",
        ],
        # Only the CUDA compiler, to build the plugin's kernels on a machine without a GPU.
        "cuda-build": ["nvidia-cuda-nvcc", "nvidia-cuda-runtime", "nvidia-cuda-cccl", "cmake>=3.24"],
        # Serving (export.to_triton, runtime.serve, TritonClient). The server binary on a CPU machine comes from
        # `pip install --no-deps nvidia-pytriton==0.7.0`: only its binaries are used, and --no-deps keeps its
        # numpy<2 pin out (the server's Python backend stub gets numpy<2 from `python -m runtime.serve --setup`).
        "serve": ["tritonclient[http,grpc]>=2.50,<3", "protobuf>=4", "grpcio>=1.60"],
    },
    entry_points={
        "console_scripts": [
            "cornernet-train=trainer.train:main",
            "cornernet-to-onnx=export.to_onnx:main",
            "cornernet-quantize=export.quantize:main",
            "cornernet-to-trt=export.to_trt:main",
            "cornernet-eval=runtime.eval:main",
        ]
    },
)
