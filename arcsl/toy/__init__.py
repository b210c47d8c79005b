"""The toy domain: drawing programs on small grids, and a small model trained from scratch to write them.

It reproduces the seeds' first hindsight-relabelling experiment at laptop scale. A task shows grids
before and after the same few drawing calls; the model writes those calls as a program; a model
pretrained on 1-5 calls generalises only partly to more, which is where search-and-learn helps.

    config.py     every toy setting as dataclasses (tasks, model, pretraining, evaluation)
    draw.py       the drawing DSL programs call (`from draw import *`); stdlib + numpy only
    tasks.py      seeded task generator: canvases, random calls, pruning, canonical order; wrong parent
                  programs (calls wrong, missing, extra or off by one) for refinement examples
    prompt.py     task -> prompt text; the completion is the program text; the refine prompt
    tokenizer.py  character-level tokenizer (plus whole tokens for the DSL's fixed phrases)
    model.py      the small Llama configuration
    pretrain.py   from-scratch pretraining with accelerate, resumable, time-boxed
    evaluate.py   pass@k by number of calls, out-of-distribution table and plot
    demo.py       `arcsl demo` and its tasks; offline_experiment.py, refine_experiment.py: the experiments

Nothing here imports the engine or the loop; they load the saved model folder like any other model.
"""
