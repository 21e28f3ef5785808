# ffmpeg-rtmp: one command to set up and test (`make test`), one for the demo (`make demo`).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := ffmpeg prometheus nginx libnginx-mod-rtmp gcc libc6-dev
# The image without a registry (`make image`) and the local cluster's real node (tests/node,
# README "Without Docker"): debootstrap, podman, runc, the CNI plugins, iptables, conntrack.
NODE_APT_PACKAGES := debootstrap podman runc containernetworking-plugins iptables conntrack
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: setup system-packages venv tools image crds lint typecheck test test-fast demo demo-down bench clean

setup: system-packages venv tools

# Debian packages: real ffmpeg/ffprobe, promtool (prometheus), nginx with the RTMP module, a C
# compiler for the workers' connect guard (hack/tools.sh), and debootstrap/podman/runc to build the
# product's image without a registry (`make image`).
system-packages:
	@missing=""; for p in $(APT_PACKAGES) $(NODE_APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  $$SUDO systemctl disable --now nginx prometheus >/dev/null 2>&1 || true; \
	fi

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

# Go-built binaries (kube-apiserver, etcd, kwok, helm, ...) in a cache outside the repo.
tools:
	bash hack/tools.sh >/dev/null

# The product's image (images/worker/Dockerfile) on a debootstrap base, saved as an OCI archive in
# the tools cache; rebuilt only when the Dockerfile or the package sources change.
image: system-packages venv
	$(PY) -m ffrtmp.cli dev image build

crds: venv
	$(VENV)/bin/ffrtmp crds

lint: venv
	$(VENV)/bin/ruff check operator tests
	$(VENV)/bin/ruff format --check operator tests

typecheck: venv
	$(VENV)/bin/mypy

test: setup lint typecheck
	bash hack/test.sh $(PYTEST_ARGS)

test-fast: venv
	bash hack/tools.sh --connect-guard
	$(VENV)/bin/pytest -m 'unit or ffmpeg' $(PYTEST_ARGS)

demo: setup
	$(PY) -m ffrtmp.cli demo --dir .demo $(DEMO_ARGS)

demo-down: venv
	$(PY) -m ffrtmp.cli dev cluster down --dir .demo/cluster

bench: setup
	$(VENV)/bin/pytest -m bench -p no:randomly -s tests/bench $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .dev .mypy_cache .ruff_cache .pytest_cache
