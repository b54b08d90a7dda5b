# Placeholder: the CUDA grading image is built in a later step (see README).
FROM python:3.11-slim
WORKDIR /pack
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY checkers/ checkers/
COPY grading/ grading/
COPY grader.py pytest.ini ./
USER 65534:65534
ENTRYPOINT ["python", "grader.py"]
