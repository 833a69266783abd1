"""Run the Triton kernels on CPU through Triton's interpreter.

Triton decides interpreter-or-compiler when a kernel is decorated, so the variable is set before any kernel
module is imported, and a kernel module someone imported earlier in the session is re-imported under it.
"""

from __future__ import annotations

import importlib
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"

for _name in [n for n in sys.modules if n.startswith("infleet.runtime.kernels.")]:
    importlib.reload(sys.modules[_name])
