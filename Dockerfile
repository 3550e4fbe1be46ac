# One image for api, index-worker and thumb-worker (see compose.yml).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
WORKDIR /app
# CPU build of torch first and pinned exactly: a looser pin pulls a multi-GB CUDA build.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY pyproject.toml README.md ./
COPY hotpath ./hotpath
COPY cacheman ./cacheman
COPY taskkit ./taskkit
COPY index_worker ./index_worker
COPY thumb_worker ./thumb_worker
RUN pip install --no-cache-dir .
RUN useradd --system --uid 10001 hotpath
USER hotpath
EXPOSE 8000
CMD ["hotpath", "api"]
