# statestream server image: the `server` extra only (onnxruntime, grpcio); no TensorFlow.
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md ./
COPY client client
COPY server server
COPY export export
RUN pip install --no-cache-dir ".[server]"
COPY models /app/models
EXPOSE 50051 9100
ENTRYPOINT ["statestream-server"]
CMD ["--models", "/app/models", "--host", "0.0.0.0", "--port", "50051", "--metrics-port", "9100"]
