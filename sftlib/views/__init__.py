"""Views: what people look at: token views, tables, the example browser, conversations, plots.

Display only: these build HTML, widgets, text and figures, and write nothing.

- `tokens`: which tokens the loss covers, as coloured token views, turn by turn;
- `tables`: the data report, drops, the gate and the run summary as table rows and HTML;
- `browser`: the example browser (a slider in JupyterLab, static under the pipeline);
- `report`: the data report as text, for `sftlib check`;
- `conversation`: a row as people read it, one line per message;
- `plots`: figures for notebooks and run folders.
"""

__all__ = ["browser", "conversation", "plots", "report", "tables", "tokens"]
