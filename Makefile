# Convenience aliases for the two commands of dev.py (which needs nothing but Python >= 3.11).
PYTHON ?= python3

.PHONY: demo test heavy docs
demo:
	$(PYTHON) dev.py demo

test:
	$(PYTHON) dev.py test

heavy:
	$(PYTHON) dev.py test --heavy

docs:
	$(PYTHON) dev.py test --no-tests
