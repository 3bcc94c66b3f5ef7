"""Training on several processes under torchrun: DDP, rows of each batch per process, one writer.

`dorl train` started by `torchrun --nproc_per_node N` trains with N processes (one per GPU
with NCCL, or CPU processes with gloo) and writes what one process would have written, to the
precision of floating-point sums: each process computes its rows of every global batch, the
losses are computed from every process's rows gathered back (`rows`), BatchNorms use the global
batch's statistics (`batchnorm`), DDP averages the gradients (`parallel`), each process loads
and augments its own rows and encodes its share of the token cache (`data`), and rank 0 alone
writes checkpoints, the token cache and the bundle (`processes.main_writes`).
"""

from dorl.training.distributed.data import RowShard, sharded_encode
from dorl.training.distributed.parallel import data_parallel
from dorl.training.distributed.processes import Processes, barrier, current, main_writes, start, stop
from dorl.training.distributed.rows import gather_rows, leading_rows, rows_parallel

__all__ = ["Processes", "RowShard", "barrier", "current", "data_parallel", "gather_rows", "leading_rows",
           "main_writes", "rows_parallel", "sharded_encode", "start", "stop"]
