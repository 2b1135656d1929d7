"""Widget explorers: a static figure first, sliders that answer instantly, and a button that trains live.

The static figure is an ordinary matplotlib output, so a chapter reads well on GitHub or without a kernel. The
sliders take their values from a precomputed grid (the chapter's sweep), and ``answer`` must be instant: a look-up or a
closed-form model. ``run`` is the slow path: it trains or measures live at the chosen setting.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from typing import Any

import matplotlib.pyplot as plt

from .tables import format_cell

Readout = dict[str, Any]


def _readout_html(title: str, values: Readout) -> str:
    cells = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td><b>{html.escape(format_cell(v, 3))}</b></td></tr>"
        for k, v in values.items()
    )
    return f"<div><b>{html.escape(title)}</b><table>{cells}</table></div>"


def static_readout(knobs: dict[str, Any], values: Readout) -> str:
    """The explorer's readout at one setting as plain text: what GitHub, nbviewer and VS Code show under the static
    figure, where the widgets cannot run."""
    setting = ", ".join(f"{name} = {format_cell(value, 3)}" for name, value in knobs.items())
    width = max(len(str(name)) for name in values) if values else 0
    lines = [f"Readout at {setting} (move the controls below in a live kernel):"]
    lines += [f"  {str(name).ljust(width)}  {format_cell(value, 3)}" for name, value in values.items()]
    return "\n".join(lines)


def explorer(
    controls: dict[str, Sequence[Any]],
    answer: Callable[..., Readout],
    *,
    plot: Callable[[Any, dict[str, Any], Readout], None] | None = None,
    run: Callable[..., Readout] | None = None,
    initial: dict[str, Any] | None = None,
    title: str = "",
    show_static: bool = True,
):
    """Build (and display) an explorer.

    Args:
        controls: knob name -> the grid of values a slider offers (the precomputed sweep's grid).
        answer: ``answer(**knobs) -> {readout name: value}``; must return instantly.
        plot: ``plot(ax, knobs, readout)`` draws the current setting; drawn once statically, then live.
        run: ``run(**knobs) -> {readout name: value}``, the live (slow) path behind the "run" button.
        initial: starting values (default: the middle of each grid).
        show_static: before the widgets, draw the static figure for the initial setting and print its readout as
            plain text, so a viewer without a kernel sees both.

    Returns the ipywidgets box (CSS class ``accel-explorer``; its readout has ``accel-explorer-readout``).
    """
    import ipywidgets as widgets
    from IPython.display import display

    for name, grid in controls.items():
        if len(grid) == 0:
            raise ValueError(f"Invalid controls[{name!r}]: empty grid; give at least one value")
    knobs = {name: list(grid)[len(grid) // 2] for name, grid in controls.items()}
    for name, value in (initial or {}).items():
        if name not in controls or value not in list(controls[name]):
            raise ValueError(f"Invalid initial[{name!r}]: {value!r}; allowed: {list(controls.get(name, []))}")
        knobs[name] = value

    if show_static:
        initial_readout = answer(**knobs)
        if plot is not None:
            fig, ax = plt.subplots()
            plot(ax, dict(knobs), initial_readout)
            plt.show()
        print(static_readout(knobs, initial_readout))

    sliders = {
        name: widgets.SelectionSlider(
            options=[(format_cell(v, 3), v) for v in grid], value=knobs[name], description=name,
            continuous_update=True, style={"description_width": "initial"}, layout=widgets.Layout(width="420px"),
        )
        for name, grid in controls.items()
    }
    readout = widgets.HTML()
    readout.add_class("accel-explorer-readout")
    figure_area = widgets.Output()
    live = widgets.HTML()
    live.add_class("accel-explorer-live")

    def refresh(*_, draw: bool = True):
        current = {name: s.value for name, s in sliders.items()}
        values = answer(**current)
        readout.value = _readout_html("model / precomputed", values)
        if plot is not None and draw:
            with figure_area:
                figure_area.clear_output(wait=True)
                fig, ax = plt.subplots()
                plot(ax, current, values)
                plt.show()

    for slider in sliders.values():
        slider.observe(refresh, names="value")

    children: list[Any] = [widgets.HTML(f"<b>{html.escape(title)}</b>")] if title else []
    children += list(sliders.values()) + [readout]
    if run is not None:
        button = widgets.Button(description="run live", icon="play", button_style="primary")

        def on_click(_):
            button.disabled = True
            live.value = "<i>running…</i>"
            try:
                current = {name: s.value for name, s in sliders.items()}
                live.value = _readout_html(f"live run at {current}", run(**current))
            except Exception as error:  # show the failure in the widget rather than losing it in a log
                live.value = f"<span style='color:#b00'>run failed: {html.escape(repr(error))}</span>"
            finally:
                button.disabled = False

        button.on_click(on_click)
        children += [button, live]
    box = widgets.VBox(children + [figure_area], layout=widgets.Layout(padding="4px 12px"))
    box.add_class("accel-explorer")
    refresh(draw=not show_static)  # the static figure above already shows the initial setting
    display(box)
    return box
