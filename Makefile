# heat-gpu: the two commands of the README's Quick start, and the pieces they are made of.
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
export PATH := $(VENV)/bin:$(PATH)

.PHONY: bootstrap demo test lint unit matrix functional bench cloud-start cloud-stop cloud-clean sample-config clean

bootstrap:
	@tools/bootstrap.sh

## make demo: start the local cloud if needed, create the GPU flavor and a GPU stack, print its outputs.
demo: bootstrap
	@$(PY) tools/demo.py $(DEMO_ARGS)

## make test: the whole suite: lint, unit tests, sample-program compilation, end-to-end on the local cloud.
test: bootstrap
	@tools/run-tests.sh

lint: bootstrap
	@tools/lint.sh

unit: bootstrap
	@$(VENV)/bin/stestr --test-path tests/unit run

## make matrix: the plugin and the unit suite on every other supported heat release (a venv each).
matrix: bootstrap
	@$(PY) -m tools.release_matrix

functional: bootstrap
	@$(VENV)/bin/stestr --test-path tests/functional run --concurrency 1

bench: bootstrap
	@$(PY) benchmarks/stack_scale.py

cloud-start: bootstrap
	@$(PY) tools/localcloud/cloud.py start

cloud-stop:
	@$(PY) tools/localcloud/cloud.py stop

cloud-clean:
	@$(PY) tools/localcloud/cloud.py clean

sample-config: bootstrap
	@$(VENV)/bin/oslo-config-generator --namespace heat_gpu --output-file etc/heat-gpu.conf.sample

clean:
	rm -rf $(VENV) .venv-20[0-9][0-9].[0-9] .stestr build dist *.egg-info
