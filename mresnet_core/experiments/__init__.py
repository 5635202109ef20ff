"""The paper's experiments, one module per notebook. Not API: their names may change.

* ``common``: what every notebook shares (set-up cell, toy residual functions, the
  grid-rounded input, relative error, cached training on fresh batches, claim checks);
* ``table1``: Table 1, converted torchvision ResNets and a Transformer, same weights;
* ``dynamics``: Figures 1 and 5, the tied 1-D and 2-D toy networks;
* ``depth_memory``: Figure 2, memory vs depth, with its shape theory;
* ``exactness``: naive vs exact inversion and the information buffer's cost;
* ``reference``: driving the authors' package ``momentumnet`` 0.10 when installed;
* ``l2o``: Section 3.3, learning to optimize, with the additive-coupling RevNet;
* ``ode``: Section 4, Prop. 8 and the second-order ODE limit;
* ``images``: what the image notebooks share (cached trainer runs, spread over seeds);
* ``table2``: Table 2, ResNet vs Momentum ResNets (v0 = 0 and v0 = f(x0)) over seeds;
* ``gamma_robustness``: Figure 6 (top), accuracy at gamma_test, with and without refit;
* ``batch_memory``: Figure 7, memory vs batch size and accuracy vs memory;
* ``finetune``: Figure 8, fine-tuning under one memory budget, accuracy vs wall time;
* ``performance``: speed and whole-step memory of every contender (the benchmark harness).

The library itself (``MomentumNet``, ``to_momentumnet``, ``memory``, ``train``) never imports them.
"""
