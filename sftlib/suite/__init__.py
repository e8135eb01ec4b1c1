"""The notebook suite: what a notebook writes, and the pipeline that runs the five in order.

- `notebook`: a notebook's run folder, its recorded results, figures, pages and HTML copy;
- `records`: what each notebook records, built here so that each records it in one line;
- `pipeline`: the notebooks run in order with papermill, their records gathered;
- `kernels`: the kernels they run on: this interpreter, headless, Ctrl-C passed on.
"""

__all__ = ["kernels", "notebook", "pipeline", "records"]
