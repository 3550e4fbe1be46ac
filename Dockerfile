# One image for api, index-worker and thumb-worker (see compose.yml).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
WORKDIR /app
# CPU build of torch first, at the lock's exact version (a looser pin pulls a multi-GB CUDA build). --no-deps:
# torch's own dependencies come from PyPI at the lock's versions in the next install, as in CI.
RUN pip install --no-cache-dir --no-deps --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY pyproject.toml README.md requirements.lock ./
COPY hotpath ./hotpath
COPY cacheman ./cacheman
COPY taskkit ./taskkit
COPY index_worker ./index_worker
COPY thumb_worker ./thumb_worker
# requirements.lock: the exact versions `make test` ran with (`==2.13.0` admits the installed 2.13.0+cpu).
RUN pip install --no-cache-dir -c requirements.lock .
RUN useradd --system --uid 10001 hotpath
USER hotpath
EXPOSE 8000
CMD ["hotpath", "api"]
