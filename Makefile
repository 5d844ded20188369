# Two commands on a fresh machine:  `make demo` (set up + run the demo)  and  `make test` (set up + run the tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	touch $@

demo: setup
	$(BIN)/python run.py

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python bench/nerf.py && $(BIN)/python bench/poses.py && $(BIN)/python bench/idr.py && $(BIN)/python bench/export.py

clean:
	rm -rf outputs .pytest_cache
