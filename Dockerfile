# Grading image: the same grader, on CUDA when the host has a GPU (docker run --gpus all).
#   docker build -t transformer-labs-grader .                                # students' image: no solutions
#   docker build --build-arg WITH_SOLUTIONS=1 -t transformer-labs-grader .   # instructors' image
# torch 2.13.0 comes from the base image (pinned by digest) and matches requirements.txt; it is not reinstalled.
ARG WITH_SOLUTIONS=0
FROM pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime@sha256:6acf597eeb8e376a96580dde4952f37cc017fef732bb40bfc73f28f25e3f64b4 AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /pack
COPY requirements.txt .
# only what the image lacks: every pin but torch
RUN grep -v '^torch==' requirements.txt > /tmp/requirements-extra.txt \
    && pip install --no-cache-dir -r /tmp/requirements-extra.txt \
    && rm /tmp/requirements-extra.txt
COPY grader.py pytest.ini ./
COPY pack/ pack/
COPY protocol/ protocol/
COPY parent/ parent/
COPY judge/ judge/
COPY checkers/ checkers/
COPY worker/ worker/
COPY labs/ labs/

FROM base AS pack-0

FROM base AS pack-1
COPY solutions/ solutions/

# The grader runs as root and gives each worker (the process that runs student code) an unprivileged uid of its
# own; the pack and /private, where submissions and results are mounted, are closed to every other uid:
#   -v "$PWD/labs:/private/submission:ro"   (parent/container.py has the full, hardened `docker run`)
# hadolint ignore=DL3006
FROM pack-${WITH_SOLUTIONS}
RUN chmod -R go-rwx /pack && mkdir -m 0700 /private
ENTRYPOINT ["python", "/pack/grader.py"]
CMD ["all", "--submission", "/private/submission"]
