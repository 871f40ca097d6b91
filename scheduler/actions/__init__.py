"""The actions of a scheduling cycle, run in this order by `cycle.run_cycle` (KAI's action list):

1. `allocate`    — place pending gangs on free GPUs, in the order of work;
2. `reclaim`     — take GPUs back from queues above their fair share for queues below theirs;
3. `preempt`     — inside one leaf queue, stop lower-priority preemptible jobs for a higher one;
4. `consolidate` — move preemptible jobs elsewhere so that a waiting gang fits (only if every
   moved job is re-placed in the same plan).

Each action is a function `run(ctx: CycleContext) -> None` over the shared `actions.context`; every
move goes through the context's `Statement`, so a rejected what-if costs a rollback, not a copy.
"""
