# Make owns "what is stale"; `python -m pipeline <stage>` owns how to do one stage.
# Every target runs in the current folder, so `make -f path/to/Makefile folds` works anywhere.
# `make help` lists the targets.

ROOT        := $(dir $(abspath $(lastword $(MAKEFILE_LIST))))
PYTHON      ?= python3
VENV        := $(ROOT).venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.installed
COMPETITION ?= configs/competition.yaml
ARGS        ?=
COMP_ARGS   ?=
PYTEST_ARGS ?=
# test workers (pytest-xdist): one per core up to 4; a test file stays on one worker (its module fixtures run once)
TEST_JOBS ?= auto
XDIST = -n $(TEST_JOBS) --maxprocesses=4 --dist loadfile

RUN := $(PY) -m pipeline

# A value pasted into a recipe is single-quoted, its own quotes escaped: `make X="a; touch f"` runs nothing.
q = '$(subst ','\'',$(1))'
qwords = $(foreach w,$(1),$(call q,$(w)))
# COMP_ARGS given to make (even empty: `COMP_ARGS=` clears them) reach every stage that reads the
# competition config and are recorded in folds/choices.json; not given, every stage uses the recorded ones.
COMP_FLAG = $(if $(filter command line environment override,$(origin COMP_ARGS)),--comp-args $(call q,$(COMP_ARGS)))
# Targets that read no competition config refuse COMP_ARGS rather than ignore them.
NO_COMP_ARGS = @if [ -n $(call q,$(strip $(COMP_ARGS))) ]; then echo "make $@: COMP_ARGS has no effect here \
  (it overrides keys of $(COMPETITION) for the stages that read it)" >&2; exit 2; fi

.DEFAULT_GOAL := help
.PHONY: help install test test-fast demo data-fashion-mnist check folds weights models tune distill train train-all predict pseudo ensemble validate report eda lr-find show-batch package submit bench clean clean-all FORCE

# `make help` lists the targets in pipeline order, by group (a test checks every described target is here).
HELP_GROUPS := data:demo,data-fashion-mnist,check,eda,folds training:models,weights,train-all,train,tune,lr-find,show-batch \
  prediction:predict,pseudo,distill blending:ensemble,validate,report kaggle:package,submit tools:install,test,test-fast,bench,bench-scale,gpu-check,clean,clean-all,help

help: ## list every target with a one-line description, in pipeline order
	@echo "usage: make <target> [COMPETITION=configs/competition.yaml] [COMP_ARGS='competition key=value ...'] [ARGS='model key=value ...']"
	@for group in $(HELP_GROUPS); do echo "$${group%%:*}:"; for t in $$(echo "$${group#*:}" | tr , ' '); do \
	  grep -hE "^$$t:.*## " $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-20s %s\n", $$1, $$2}'; done; done

$(STAMP): $(ROOT)pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is needed (set PYTHON=python3.11)")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e "$(ROOT)[dev,tensorboard,dicom,tracking,cluster,tune]"
	@touch $@

install: $(STAMP) ## create .venv and install the project with its dev, tensorboard, dicom, tracking, cluster (Ray) and tune (Optuna) extras

test: $(STAMP) ## run the test suite (sets itself up), one worker per core up to 4 (TEST_JOBS=0: none)
	cd $(ROOT) && $(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

test-fast: $(STAMP) ## the quick loop, minutes on 2 cores: every module, no end-to-end Make runs, Ray or package round trips (-m "not slow")
	cd $(ROOT) && $(PY) -m pytest -m "not slow" $(XDIST) $(PYTEST_ARGS)

demo: $(STAMP) ## write the embedded demo competition (scikit-learn digits) to data/demo
	$(NO_COMP_ARGS)
	$(RUN) demo

N_TRAIN ?=
N_TEST  ?=
data-fashion-mnist: $(STAMP) ## write Fashion-MNIST to data/fashion-mnist (N_TRAIN=/N_TEST= subsample)
	$(NO_COMP_ARGS)
	$(RUN) fashion-mnist $(if $(N_TRAIN),--n-train $(call q,$(N_TRAIN))) $(if $(N_TEST),--n-test $(call q,$(N_TEST)))

check: $(STAMP) ## in seconds, before training: config, tables, every image path, a decoded sample, answers, model configs
	$(RUN) check -c $(call q,$(COMPETITION)) $(COMP_FLAG)

folds: $(STAMP) ## assign every training row to a validation fold -> folds/folds.csv
	$(RUN) folds -c $(call q,$(COMPETITION)) $(COMP_FLAG)

# --- backbones and their pretrained weights ------------------------------------------------------------
PATTERN ?= *
models: $(STAMP) ## timm model names matching PATTERN='convnext*' with their pretrained tags (no network)
	$(NO_COMP_ARGS)
	$(RUN) models $(call q,$(PATTERN))

weights: $(STAMP) ## online, once: pretrained weights of every `pretrained: true` model config -> weights/ (offline runs then use them)
	$(RUN) weights -c $(call q,$(COMPETITION)) $(COMP_FLAG) $(if $(MODELS),--models $(call q,$(MODELS)))

# --- training -----------------------------------------------------------------------------------
# One target per model x fold: runs/<model>/fold<k>/done.json, the fold's record. `plan` (one Python
# process, no torch) lists the folds whose record does not hold what the current config, ARGS and
# folds.csv give, and says why; only those are trained (FORCE: the record, not a file date, decides). When every fold is
# done nothing else starts. A fold trained with other ARGS whose config file is unchanged is kept (and
# said so) unless RETRAIN=1. Where the planned folds run:
# - no GPU (or GPUS=none): Make trains them itself, `-j` running folds in parallel, as always;
# - GPUs (GPUS=, default every visible one): `launch` runs one fold per GPU at a time, pinned with
#   CUDA_VISIBLE_DEVICES (JOBS_PER_GPU=2 packs two; NPROC=k gives each fold k GPUs with DDP), each fold's
#   output in runs/<model>/logs/fold<k>.log; a failing fold does not stop the others;
# - CLUSTER=ray [RAY_ADDRESS=host:6379]: one Ray task per fold (JOB_GPUS=, JOB_CPUS=, RETRIES=).
# NNODES=n NODE_RANK=i RDZV=host:port spans one fold's DDP over n machines (run it on each, each waiting up to
# RDZV_TIMEOUT s for the others; see docs/scaling.md).
MODELS ?=
MODEL  ?=
FOLD   ?=
NPROC  ?= 1
NNODES ?= 1
NODE_RANK ?= 0
RDZV   ?=
GPUS   ?=
JOBS_PER_GPU ?= 1
CLUSTER ?=
RAY_ADDRESS ?=
JOB_GPUS ?=
JOB_CPUS ?=
RETRIES ?= 2
RDZV_TIMEOUT ?= 600
# $(call count,VAR,what[,0]): VAR's value when it is a whole number of at least 1 (with 0: at least 0), else
# make stops with one line naming VAR (checked where the value enters, not in torchrun's traceback).
digitless = $(subst 0,,$(subst 1,,$(subst 2,,$(subst 3,,$(subst 4,,$(subst 5,,$(subst 6,,$(subst 7,,$(subst 8,,$(subst 9,,$(1)))))))))))
count = $(if $(and $($(1)),$(if $(call digitless,$($(1))),,y),$(or $(3),$(subst 0,,$($(1))))),$($(1)),$(error \
  $(1)=$($(1)): expected a whole number of at least $(or $(3),1) ($(2))))
# $(check_node_rank): nothing when NODE_RANK (at least 0) is below NNODES (at least 1), else make stops with one
# line naming both.
check_node_rank = $(if $(shell [ $(call count,NODE_RANK,this node's rank: 0 on the node at RDZV and 1 to NNODES-1 on \
  the others,0) -lt $(call count,NNODES,machines one fold's DDP spans) ] && echo y),,$(error NODE_RANK=$(NODE_RANK) \
  is not below NNODES=$(NNODES): ranks run from 0 (the node at RDZV) to NNODES-1 (one per machine)))
TORCHRUN = $(VENV)/bin/torchrun $(if $(filter-out 1,$(NNODES)),--nnodes=$(NNODES) --node_rank=$(check_node_rank)$(NODE_RANK) \
  --rdzv_endpoint=$(call q,$(or $(RDZV),$(error NNODES=$(NNODES) needs RDZV=host:port, the address of the node with NODE_RANK=0))) \
  --rdzv_conf=timeout=$(call count,RDZV_TIMEOUT,seconds every node waits for all NNODES to join) \
  $(info NNODES=$(NNODES): this node (NODE_RANK=$(NODE_RANK)) waits at the rendezvous RDZV=$(RDZV) (the node with \
  NODE_RANK=0) for all $(NNODES) nodes to join, for up to RDZV_TIMEOUT=$(RDZV_TIMEOUT) s; run the same command on \
  every other node with its own NODE_RANK),--standalone) --nproc_per_node=$(NPROC)
TRAIN  = $(if $(filter-out 1,$(call count,NPROC,GPU processes per fold: torchrun's --nproc_per_node) \
  $(call count,NNODES,machines one fold's DDP spans) $(if $(filter command line,$(origin NODE_RANK)),$(check_node_rank))),$(TORCHRUN) \
  -m pipeline,$(RUN)) train -c $(call q,$(COMPETITION))
LAUNCH = $(RUN) launch -c $(call q,$(COMPETITION)) --train-cmd $(call q,$(TRAIN)) --gpus $(call q,$(GPUS)) --jobs-per-gpu $(call q,$(JOBS_PER_GPU)) \
  --nproc $(call q,$(NPROC)) $(if $(PSEUDO),--pseudo $(call q,$(PSEUDO))) $(if $(CLUSTER),--cluster $(call q,$(CLUSTER))) \
  $(if $(RAY_ADDRESS),--address $(call q,$(RAY_ADDRESS))) $(if $(JOB_GPUS),--job-gpus $(call q,$(JOB_GPUS))) \
  $(if $(JOB_CPUS),--job-cpus $(call q,$(JOB_CPUS))) --retries $(call q,$(RETRIES))

PSEUDO ?=
RETRAIN ?=
train-all: folds ## train every model x fold not done yet (MODELS="a b" limits, GPUS=0,1 one fold per GPU, JOBS_PER_GPU=2, NPROC=n DDP, CLUSTER=ray, -j parallel folds on CPU, PSEUDO=folds/pseudo.csv a pseudo round, RETRAIN=1 also folds trained with other ARGS)
	@gpus=$$($(RUN) gpus $(call q,$(GPUS))) || exit 1; \
	targets=$$($(RUN) plan -c $(call q,$(COMPETITION)) $(COMP_FLAG) --models $(call q,$(MODELS)) $(if $(PSEUDO),--pseudo $(call q,$(PSEUDO))) $(if $(RETRAIN),--retrain) $(call qwords,$(ARGS))) || exit 1; \
	if [ -z "$$targets" ]; then exit 0; fi; \
	if [ -n $(call q,$(CLUSTER)) ] || [ -n "$$gpus" ]; then \
	  $(LAUNCH) --targets "$$targets" $(call qwords,$(ARGS)); \
	else \
	  $(MAKE) --no-print-directory -f $(firstword $(MAKEFILE_LIST)) $$targets COMPETITION=$(call q,$(COMPETITION)) ARGS=$(call q,$(ARGS)) NPROC=$(call q,$(NPROC)) PSEUDO=$(call q,$(PSEUDO)); \
	fi

runs/%/done.json: FORCE
	$(TRAIN) $(COMP_FLAG) --target $@ $(if $(PSEUDO),--pseudo $(call q,$(PSEUDO))) $(call qwords,$(ARGS))

train: $(STAMP) ## rerun exactly one fold: make train MODEL=name FOLD=k [ARGS="epochs=3 lr=1e-3"]
	@test -n $(call q,$(MODEL)) -a -n $(call q,$(FOLD)) || { echo "usage: make train MODEL=<name> FOLD=<k>"; exit 2; }
	$(TRAIN) $(COMP_FLAG) --model $(call q,$(MODEL)) --fold $(call q,$(FOLD)) --rerun $(call qwords,$(ARGS))

FORCE:

# --- predictions ----------------------------------------------------------------------------------
TTA ?=
predict: train-all ## OOF + test tables with TTA for every trained model -> stacking/ (TTA="[none,hflip]" overrides; with GPUs one model per GPU)
	$(RUN) predict -c $(call q,$(COMPETITION)) $(COMP_FLAG) $(if $(MODELS),--models $(call q,$(MODELS))) --gpus $(call q,$(GPUS)) \
	  --jobs-per-gpu $(call q,$(JOBS_PER_GPU)) $(if $(TTA),$(call q,tta=$(TTA)))

# --- distillation: the ensemble into one model -------------------------------------------------------
STUDENT ?=
DISTILL_ALPHA ?=
TEMPERATURE ?=
# The student given before (folds/distill.record.json) when STUDENT= is not given; none: usage, before any work.
DISTILL_STUDENT = $(or $(STUDENT),$(shell $(RUN) distill --recorded-student 2>/dev/null))
ifneq ($(filter distill,$(MAKECMDGOALS)),)
ifeq ($(strip $(DISTILL_STUDENT)),)
$(error usage: make distill STUDENT=<model> [DISTILL_ALPHA=0.5] [TEMPERATURE=2] (no student was given before))
endif
endif
DISTILL_ARGS = distill=folds/distill.parquet $(if $(DISTILL_ALPHA),distill_alpha=$(DISTILL_ALPHA)) $(if $(TEMPERATURE),temperature=$(TEMPERATURE))
distill: ensemble ## the blend distilled into one model: make distill STUDENT=name [DISTILL_ALPHA=0.5 TEMPERATURE=2] -> runs/ and stacking/<name>-distilled (STUDENT sticks)
	@$(if $(STUDENT),:,echo "note: STUDENT=$(DISTILL_STUDENT) as given before (folds/distill.record.json); give STUDENT= to change it")
	$(RUN) distill -c $(call q,$(COMPETITION)) $(COMP_FLAG) --student $(call q,$(DISTILL_STUDENT))
	$(MAKE) --no-print-directory -f $(firstword $(MAKEFILE_LIST)) train-all COMPETITION=$(call q,$(COMPETITION)) MODELS=$(call q,$(DISTILL_STUDENT)) \
	  ARGS=$(call q,$(DISTILL_ARGS)) GPUS=$(call q,$(GPUS)) JOBS_PER_GPU=$(call q,$(JOBS_PER_GPU)) NPROC=$(call q,$(NPROC)) CLUSTER=$(call q,$(CLUSTER))
	$(RUN) predict -c $(call q,$(COMPETITION)) $(COMP_FLAG) --models $(call q,$(DISTILL_STUDENT) $(DISTILL_STUDENT)-distilled)
	$(RUN) distill -c $(call q,$(COMPETITION)) $(COMP_FLAG) --student $(call q,$(DISTILL_STUDENT)) --compare

# --- blend and submission -------------------------------------------------------------------------
METHOD ?=
ensemble: predict ## blend every model honestly -> submissions/submission.csv, cv.md, cv.json (METHOD=auto|vote|mean|... sticks until given again, FORCE=1 reruns unchanged inputs)
	$(RUN) ensemble -c $(call q,$(COMPETITION)) $(COMP_FLAG) $(if $(METHOD),--method $(call q,$(METHOD))) $(if $(FORCE),--force)

# --- Kaggle bundle ----------------------------------------------------------------------------------
KAGGLE_USER ?=
COMPETITION_SLUG ?=
MACHINE_SHAPE ?=
WHEELS      ?=
TEST_SIZE   ?=
GPU_FACTOR  ?=
FP16        ?=
BUNDLE      ?= dist/kaggle
package: ensemble ## offline Kaggle kernel + dataset of the chosen blend (STUDENT=name: the distilled student alone, sticks until STUDENT=none) -> dist/kaggle/ (KAGGLE_USER=, COMPETITION_SLUG=, MACHINE_SHAPE=NvidiaTeslaT4, WHEELS=, TEST_SIZE=, GPU_FACTOR=, FP16=1, BUNDLE=)
	$(RUN) package -c $(call q,$(COMPETITION)) --out $(call q,$(BUNDLE)) $(if $(STUDENT),--student $(call q,$(STUDENT))) \
	  $(if $(KAGGLE_USER),--kaggle-user $(call q,$(KAGGLE_USER))) \
	  $(if $(COMPETITION_SLUG),--competition-slug $(call q,$(COMPETITION_SLUG))) $(if $(MACHINE_SHAPE),--machine-shape $(call q,$(MACHINE_SHAPE))) \
	  $(if $(WHEELS),--wheels $(call q,$(WHEELS))) $(if $(TEST_SIZE),--test-size $(call q,$(TEST_SIZE))) \
	  $(if $(GPU_FACTOR),--gpu-factor $(call q,$(GPU_FACTOR))) $(if $(FP16),--fp16) $(COMP_FLAG)

DRY_RUN ?=
KERNEL_VERSION ?=
submit: $(STAMP) ## send it to Kaggle: the CSV, or on a code competition the bundle's dataset version + kernel push, then KERNEL_VERSION=n submits that run (COMPETITION_SLUG=, DRY_RUN=1 prints only)
	$(if $(KAGGLE_CLI),KAGGLE_CLI=$(call q,$(KAGGLE_CLI))) $(RUN) submit -c $(call q,$(COMPETITION)) --bundle $(call q,$(BUNDLE)) \
	  $(if $(COMPETITION_SLUG),--competition-slug $(call q,$(COMPETITION_SLUG))) $(if $(DRY_RUN),--dry-run) $(COMP_FLAG) \
	  $(if $(KERNEL_VERSION),--kernel-version $(call count,KERNEL_VERSION,the finished version of the pushed kernel to submit))

FILE ?= submissions/submission.csv
validate: $(STAMP) ## check a CSV against the sample submission (FILE=path.csv)
	$(RUN) validate $(call q,$(FILE)) -c $(call q,$(COMPETITION)) $(COMP_FLAG)

THRESHOLD ?=
TOP_FRAC  ?=
SOFT      ?=
pseudo: $(STAMP) ## confident blend (or MODEL=) test rows -> folds/pseudo.csv (THRESHOLD=0.95 | TOP_FRAC=0.3, SOFT=1)
	$(RUN) pseudo -c $(call q,$(COMPETITION)) $(COMP_FLAG) $(if $(MODEL),--model $(call q,$(MODEL))) $(if $(THRESHOLD),--threshold $(call q,$(THRESHOLD))) \
	  $(if $(TOP_FRAC),--top-frac $(call q,$(TOP_FRAC))) $(if $(SOFT),--soft)

# --- reports and tools -----------------------------------------------------------------------------
report: $(STAMP) ## leaderboard, curves, confusion, per-class scores, mistakes, Grad-CAM -> submissions/report/ (after make ensemble)
	@test -f submissions/cv.json || { echo "make report: submissions/cv.json not found; run 'make ensemble' first" >&2; exit 2; }
	$(RUN) report -c $(call q,$(COMPETITION)) $(COMP_FLAG)

eda: $(STAMP) ## classes, image statistics, duplicates, adversarial train/test shift -> submissions/eda/
	$(RUN) eda -c $(call q,$(COMPETITION)) $(COMP_FLAG)

TRIALS ?= 20
FOLDS  ?= 0
tune: folds ## Optuna over a model's `search` space: make tune MODEL=name TRIALS=30 [FOLDS="0 1"] -> configs/models/<name>-tuned.yaml (resumable)
	@test -n $(call q,$(MODEL)) || { echo "usage: make tune MODEL=<name> [TRIALS=20] [FOLDS=0]" >&2; exit 2; }
	$(RUN) tune -c $(call q,$(COMPETITION)) $(COMP_FLAG) --model $(call q,$(MODEL)) --trials $(call q,$(call count,TRIALS,the trials the study holds when the search ends)) --folds-to-tune $(call q,$(FOLDS))

lr-find: $(STAMP) ## LR range test: make lr-find MODEL=name [ARGS="batch_size=32"] -> runs/<model>/lr_find.png, suggested lr
	@test -n $(call q,$(MODEL)) || { echo "usage: make lr-find MODEL=<name> [ARGS='key=value ...']" >&2; exit 2; }
	$(RUN) lr-find -c $(call q,$(COMPETITION)) $(COMP_FLAG) --model $(call q,$(MODEL)) $(call qwords,$(ARGS))

show-batch: $(STAMP) ## what the model sees: make show-batch MODEL=name [ARGS="augment=heavy"] -> runs/<model>/show_batch/{train,eval,tta}.png
	@test -n $(call q,$(MODEL)) || { echo "usage: make show-batch MODEL=<name> [ARGS='key=value ...']" >&2; exit 2; }
	$(RUN) show-batch -c $(call q,$(COMPETITION)) $(COMP_FLAG) --model $(call q,$(MODEL)) $(call qwords,$(ARGS))

BENCH_ARGS ?=
bench: $(STAMP) ## benchmark table: data-path efficiency, TTA img/s, Fashion-MNIST quality, blend times -> docs/benchmarks.md
	$(NO_COMP_ARGS)
	$(RUN) bench $(call qwords,$(BENCH_ARGS))

.PHONY: bench-scale gpu-check
BENCH_SCALE_ARGS ?=
bench-scale: $(STAMP) ## wall time and peak memory of every stage but training, 10k->100k rows and 10->1,000 classes (synthetic data, about 25 min on 2 CPUs) -> docs/benchmarks.md (BENCH_SCALE_ARGS="--rows 10000 --skip-auto")
	$(NO_COMP_ARGS)
	$(RUN) bench-scale $(call qwords,$(BENCH_SCALE_ARGS))

GPU_CHECK_ARGS ?=
gpu-check: $(STAMP) ## on one GPU, under 8 min: AMP bf16/fp16, channels_last, compile, fused-optimizer NaN skip, GPUS=0 JOBS_PER_GPU=2, torchrun DDP, img/s vs timm -> docs/benchmarks.md (no GPU: says so, exits 0)
	$(NO_COMP_ARGS)
	$(RUN) gpu-check $(call qwords,$(GPU_CHECK_ARGS))

clean: ## remove stage outputs (folds, runs, stacking, submissions, dist); keeps data and .venv
	rm -rf runs dist
	find folds stacking submissions -mindepth 1 ! -name .gitkeep -exec rm -rf {} +

clean-all: clean ## also remove data/ and .venv
	rm -rf data $(VENV)
