# uefi-hv: `make run` boots the pipeline, `make test` runs the tests.
# Both start with `setup`, which installs what is missing and is quick when
# nothing is.

SHELL := /bin/bash
VENV  := .venv
BIN   := $(VENV)/bin
BUILD := build
# Debian packages the steps use (build: gcc binutils gnu-efi; image: mtools
# dosfstools fdisk; emulate: qemu-system-x86 ovmf vgabios, and bochs bochsbios
# for `--bochs system`; the project's Bochs 3.0 is built with g++ make xz-utils
# patch).
DEBS  := gcc binutils gnu-efi mtools dosfstools fdisk qemu-system-x86 ovmf \
         bochs bochsbios vgabios python3-venv g++ make xz-utils patch
# The project's Bochs 3.0 (headless, from Debian's source package): built
# once, rebuilt only when its recipe changes. docs/emulators.md says why.
BOCHS_DIR := .cache/bochs-3.0
BOCHS := $(BOCHS_DIR)/bin/bochs
PYTHON_STAMP := $(VENV)/.uefi-hv-installed
# Extra pytest arguments, e.g. make test PYTEST_ARGS="tests/test_image.py -x"
PYTEST_ARGS ?=

.PHONY: setup debs bochs run test bench clean flash

setup: debs $(PYTHON_STAMP) $(BOCHS)

# apt-get only when something is missing (and `apt-get update` only then).
debs:
	@installed=$$(dpkg-query -W -f='$${Package} $${db:Status-Abbrev}\n' $(DEBS) 2>/dev/null \
	              | awk '$$2 == "ii" { print $$1 }'); \
	missing=$$(for p in $(DEBS); do grep -qx "$$p" <<<"$$installed" || echo "$$p"; done | xargs); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" -ne 0 ]; then \
	    echo "error: missing Debian packages: $$missing" >&2; \
	    echo "       as root: apt-get update && apt-get install $$missing" >&2; \
	    exit 3; \
	  fi; \
	  echo "installing Debian packages: $$missing"; \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; \
	fi

bochs: debs $(BOCHS)

$(BOCHS): tools/build-bochs.sh $(wildcard tools/bochs-patches/*.patch)
	@rm -rf $(BOCHS_DIR)
	tools/build-bochs.sh $(BOCHS_DIR)

$(PYTHON_STAMP): pyproject.toml
	@test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	@touch $@

# The default spec's hypervisor, with hvcheck.efi chained, booted twice: in
# QEMU (its TCG has no VMX but emulates AMD SVM: the SVM backend on an EPYC;
# with KVM where nested VMX works, VMX on this CPU) and in Bochs (VMX on
# tigerlake). One image for both vendors; each console streams, then a short
# summary of both. CPUS=1 for one CPU. qemu_tcg_gaps=1: hvcheck's option for
# the two intercepts QEMU 7.2's TCG does not deliver (docs/emulators.md).
CPUS ?= 2
SUMMARY = CPU\(s\) virtualised;|backend |hvcheck: summary|hvcheck: all:|exits by reason|HVCHECK:|is not started|run-time check .* failed|VMLAUNCH failed|VMRUN failed
run: setup
	$(BIN)/uefi-hv build -o $(BUILD)/hv
	$(BIN)/uefi-hv image $(BUILD)/hv/BOOTX64.EFI -o $(BUILD)/hv.img --chain $(BUILD)/hv/hvcheck.efi \
	  --cmdline qemu_tcg_gaps=1
	@set -o pipefail; status=0; \
	for emulator in qemu bochs; do \
	  echo "== uefi-hv: $$emulator =="; \
	  $(BIN)/uefi-hv run $(BUILD)/hv.img --emulator $$emulator --cpus $(CPUS) --timeout 180 \
	    | tee $(BUILD)/run-$$emulator.log || status=1; \
	done; \
	for emulator in qemu bochs; do \
	  echo; echo "== uefi-hv: summary, $$emulator =="; \
	  grep -hE "$(SUMMARY)" $(BUILD)/run-$$emulator.log \
	    || echo "(the run printed no summary: see $(BUILD)/run-$$emulator.log)"; \
	done; \
	exit $$status

# -n 2: the suite is sized for two cores. pytest's own exit status is make's:
# 5 (no tests collected) fails like any other.
test: setup
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

# The project's figures (issue 14): the tools' times, sizes, resident memory,
# VM-exit round trips and exits by reason in Bochs, the interrupt path, and
# Linux to /init with and without the hypervisor on 1 and 2 CPUs (about fifteen
# minutes of Bochs). Writes bench/BENCHMARKS.md, benchmarks.json, the charts
# and the consoles they come from (bench/logs/).
bench: setup
	$(BIN)/uefi-hv bench -o bench

clean:
	rm -rf $(BUILD) runs .pytest_cache .hypothesis

# Write an image to a USB stick: make flash DEV=/dev/sdX (list sticks with
# `.venv/bin/uefi-hv devices`). `uefi-hv flash` refuses anything that is not a
# removable USB disk with nothing mounted, and asks before it writes.
# The image is `make run`'s (the default spec's hypervisor with hvcheck.efi
# chained); FLASH_IMAGE=... names another. FLASH_ARGS passes options on,
# e.g. FLASH_ARGS=--dry-run.
FLASH_IMAGE ?= $(BUILD)/hv.img
FLASH_ARGS ?=
flash: setup
	@test -n "$(DEV)" || { echo "error: say which stick: make flash DEV=/dev/sdX" \
	  "(list them with '$(BIN)/uefi-hv devices')" >&2; exit 2; }
	$(BIN)/uefi-hv flash $(FLASH_IMAGE) --device $(DEV) $(FLASH_ARGS)
