"""One timed torch operation in a fresh process, as a job that loads a
checkpoint does it: the memory torch allocates is new to the process (on
some machines page faults are most of a load's time, and a process that
loaded before would reuse its freed memory and hide them).  Prints the
seconds of the operation alone (imports excluded).

  loadone.py load PATH            torch.load
  loadone.py rename PATH          torch.load + strip "module." in Python
  loadone.py mmap PATH            torch.load(mmap=True), then every byte
                                  touched (torch 2.1 and later)
  loadone.py convert PATH OUT     torch.load + strip + torch.save to OUT
"""

import sys
import time

import torch


def strip_module(sd):
    """What users write today (consume_prefix_in_state_dict_if_present)."""
    return type(sd)((k[7:] if k.startswith("module.") else k, v) for k, v in sd.items())


def main():
    mode, path = sys.argv[1], sys.argv[2]
    t = time.perf_counter()
    if mode == "mmap":
        sd = torch.load(path, mmap=True)
        for v in sd.values():
            v.sum()
    else:
        sd = torch.load(path)
    if mode in ("rename", "convert"):
        sd = strip_module(sd)
    if mode == "convert":
        torch.save(sd, sys.argv[3])
    print(time.perf_counter() - t)


if __name__ == "__main__":
    main()
