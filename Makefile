# Thin wrapper around CMake. `make run` and `make test` are the two commands a newcomer needs.
BUILD_DIR ?= build
JOBS ?= $(shell nproc)
LISTEN ?= 127.0.0.1:8080
DATA_DIR ?= ./var

.PHONY: deps build test run bench clean

deps:
	@scripts/deps.sh

$(BUILD_DIR)/CMakeCache.txt:
	cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=RelWithDebInfo

build: deps $(BUILD_DIR)/CMakeCache.txt
	cmake --build $(BUILD_DIR) -j $(JOBS)

test: build
	@scripts/npm-deps.sh
	cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS) --timeout 600

run: build
	$(BUILD_DIR)/bin/agentd --listen $(LISTEN) --data-dir $(DATA_DIR)

bench: build
	bench/run.sh

clean:
	rm -rf $(BUILD_DIR)
