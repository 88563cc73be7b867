"""notebooks/assignment.ipynb runs top to bottom in this environment, and is committed without outputs."""

from pathlib import Path

import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "assignment.ipynb"


def test_notebook_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code
    assert all(not cell.outputs and cell.execution_count is None for cell in code)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_notebook_runs(tmp_path):
    # A "python3" kernel spec that starts this interpreter (the venv's), whatever specs the machine has.
    write_kernel_spec(tmp_path / "kernels" / "python3")
    manager = KernelManager(
        kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
    )
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # Raises CellExecutionError, with the cell and its traceback, on the first failing cell.
    NotebookClient(
        notebook, timeout=180, kernel_name="python3", km=manager, resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert (
        sum("image/png" in output.get("data", {}) for output in outputs) == 2
    )  # the crops and the statistics
    assert any("text/markdown" in output.get("data", {}) for output in outputs)
