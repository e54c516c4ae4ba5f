# statestream server image: the `server` extra only (onnxruntime, grpcio); no TensorFlow.
# Base pinned to an exact tag (the Python the tests run on); bump it on purpose, never by a rebuild.
FROM python:3.11.7-slim-bookworm
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md ./
COPY client/statestream client/statestream
COPY server server
COPY export export
RUN pip install --no-cache-dir ".[server]"
COPY models /app/models
# The server runs as an unprivileged user; /var/lib/statestream is its one writable folder (--state-store sqlite:...).
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin statestream \
    && mkdir -p /var/lib/statestream && chown statestream:statestream /var/lib/statestream
USER statestream
EXPOSE 50051 9100
ENTRYPOINT ["statestream-server"]
CMD ["--models", "/app/models", "--host", "0.0.0.0", "--port", "50051", "--metrics-port", "9100"]
