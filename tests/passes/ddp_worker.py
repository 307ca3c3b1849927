"""Run by ``test_ddp.py`` under ``torchrun``: gradual pruning data-parallel, then the whole job."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch.distributed as dist

from compressor import Job, PassContext, load_model, load_task, parse, run_job

zoo, out = Path(sys.argv[1]), Path(sys.argv[2])
recipe = "[gradual-prune: {sparsity: 0.8, epochs: 2, freq: 5, lr: 0.001}]"
state = load_model(zoo / "lenet300.pt", task=load_task(zoo / "digits.npz"))
final = parse(recipe).run(state, PassContext(seed=0))
rank = dist.get_rank()
digest = {
    "masks": {fqn: hashlib.sha256(m.numpy().tobytes()).hexdigest() for fqn, m in final.masks.items()},
    "weights": hashlib.sha256(
        b"".join(p.detach().numpy().tobytes() for p in final.module.parameters())
    ).hexdigest(),
    "world": dist.get_world_size(),
    "sparsity": final.history[-1].sparsity,
}
(out / f"rank{rank}.json").write_text(json.dumps(digest))
job = Job(model=zoo / "lenet300.pt", recipe=recipe, data=zoo / "digits.npz", out=out / "job", measure=False)
report = run_job(job)
(out / f"rank{rank}-report-keys.json").write_text(json.dumps(sorted(report)))
