# mnemo — the commands a newcomer types: `make demo` and `make test`.
CARGO ?= cargo
MNEMO := target/release/mnemo
OUT ?= target/demo

.PHONY: all build demo test lint fixtures interop man clean

all: build

build:
	$(CARGO) build --release

$(MNEMO): build

# The main job on shipped data: init, eval (torch-made CNN), inspect, then fisher → train-ewc → eval.
demo: build
	@mkdir -p $(OUT)
	@echo "== mnemo init: a fresh 20-16-16-5 MLP with torch's default initialisation"
	$(MNEMO) init --arch mlp:20-16-16-5 --seed 1 -o $(OUT)/fresh.safetensors
	@echo "== mnemo eval: the fresh model on the fixture dataset"
	$(MNEMO) eval $(OUT)/fresh.safetensors --data fixtures/mlp_data.safetensors
	@echo "== mnemo eval: a CNN with batchnorm made by PyTorch (torch's numbers are in fixtures/expected.json)"
	$(MNEMO) eval fixtures/cnn.safetensors --arch fixtures/cnn.arch.json --data fixtures/img_data.safetensors
	@echo "== mnemo inspect"
	$(MNEMO) inspect $(OUT)/fresh.safetensors --stats
	@echo "== mnemo fisher → train-ewc → eval: learn a second task while holding the first"
	$(MNEMO) fisher fixtures/mlp.safetensors --arch mlp:20-16-16-5 --data fixtures/mlp_data.safetensors -o $(OUT)/fisher1.safetensors
	$(MNEMO) train-ewc fixtures/mlp.safetensors --arch mlp:20-16-16-5 --data fixtures/mh_b_data.safetensors \
	  --penalty $(OUT)/fisher1.safetensors:fixtures/mlp.safetensors --lambda 100 --epochs 3 --batch-size 16 --lr 0.01 \
	  -o $(OUT)/model2.safetensors
	$(MNEMO) eval $(OUT)/model2.safetensors --data fixtures/mlp_data.safetensors
	@echo "== mnemo diff: how far did training move the weights? (exit 1 means they differ)"
	$(MNEMO) diff fixtures/mlp.safetensors $(OUT)/model2.safetensors || test $$? -eq 1

# What CI runs: formatting, lints, unit and integration tests (the real binary on fixtures).
test: lint
	$(CARGO) test --all-targets
	$(CARGO) test --doc

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

# Regenerate the PyTorch reference fixtures (needs the ~5 GB torch venv; not part of `make test`).
fixtures:
	$$(scripts/venv.sh) fixtures/gen.py
	$$(scripts/venv.sh) fixtures/gen_train.py
	$$(scripts/venv.sh) fixtures/drift/gen.py
	$$(scripts/venv.sh) fixtures/merge/gen.py

# Prove in real torch that our checkpoints load with load_state_dict(strict=True) and evaluate the same.
interop: build
	@mkdir -p $(OUT)
	$(MNEMO) init --arch mlp:784-400-400-10 -o $(OUT)/mlp.safetensors
	$$(scripts/venv.sh) scripts/torch_check.py $(OUT)/mlp.safetensors mlp:784-400-400-10
	for m in cnn zoo multihead; do \
	  $(MNEMO) init --arch fixtures/$$m.arch.json -o $(OUT)/$$m.safetensors && \
	  $$(scripts/venv.sh) scripts/torch_check.py $(OUT)/$$m.safetensors fixtures/$$m.arch.json || exit 1; \
	done

man:
	$(CARGO) run --quiet -- man --out man

clean:
	$(CARGO) clean
