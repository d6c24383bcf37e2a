# Two commands:  `make demo` (set up, then run the embedded demo) and `make test`.
.PHONY: setup demo test bench clean

setup:
	@scripts/setup.sh

demo: setup
	.venv/bin/ultrares demo $(ARGS)

test: setup
	.venv/bin/python -m pytest $(ARGS)

bench: setup
	.venv/bin/ultrares bench $(ARGS)

clean:
	rm -rf .venv .pytest_cache build *.egg-info
