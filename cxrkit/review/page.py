"""HTML of the review page: server-rendered, a little vanilla JavaScript, no external resources."""

from __future__ import annotations

import json
from html import escape
from typing import Sequence
from urllib.parse import quote, urlencode

from cxrkit.review.evidence import Answer
from cxrkit.review.studies import Review, Study

__all__ = ["list_page", "study_page", "error_page"]

_CSS = """
[hidden]{display:none !important}
body{font-family:system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1c2430}
header{background:#1c2430;color:#fff;padding:.6em 1em;display:flex;gap:1em;align-items:baseline;flex-wrap:wrap}
header a{color:#9cd}
.local{background:#fff3c4;color:#5a4500;padding:.3em 1em;font-size:.9em}
main{padding:1em}
table{border-collapse:collapse;background:#fff;min-width:40em}
td,th{padding:.3em .8em;border-bottom:1px solid #dde;text-align:left}
.status-reviewed{color:#1a7f37}.status-predicted{color:#0b5cad}.status-not{color:#777}
.pages a,.pages span{margin-right:.6em}
.bad-label{color:#b42318;font-size:.9em}
.study{display:flex;gap:1.5em;align-items:flex-start}
.viewer{position:relative;display:inline-block;background:#000;line-height:0}
.viewer img{display:block;height:calc(100vh - 9em);min-height:240px;max-height:760px;width:auto;max-width:62vw;object-fit:contain}
#cam{position:absolute;left:0;top:0;width:100%;height:100%;pointer-events:none}
.panel{background:#fff;padding:1em;border-radius:6px;flex:1 1 16em;min-width:14em;max-width:26em}
.cls{display:flex;align-items:center;gap:.5em;margin:.3em 0;width:100%;padding:.4em;border:1px solid #ccd;
 background:#fafbfc;border-radius:4px;cursor:pointer;font-size:1em;text-align:left}
.cls.predicted{border-color:#0b5cad;font-weight:600}
.cls.chosen{background:#d8f5dd;border-color:#1a7f37}
.bar{display:inline-block;height:.7em;background:#0b5cad;border-radius:2px}
.confirm{margin-top:.8em;padding:.5em 1em;font-size:1em;background:#1a7f37;color:#fff;border:0;border-radius:4px;cursor:pointer}
kbd{border:1px solid #aab;border-radius:3px;padding:0 .3em;background:#fff;color:#1c2430;font-size:.85em}
.msg{margin-top:.8em;min-height:1.2em}
.error{color:#b00020}
"""

_SCRIPT = """
(function(){
  const d = document.body.dataset;
  const msg = document.getElementById('msg');
  const cam = document.getElementById('cam');
  const toggle = document.getElementById('cam-toggle');
  function go(url){ if(url){ window.location.href = url; } }
  function showCam(on){ if(cam){ cam.hidden = !on; } if(toggle){ toggle.checked = on; }
    try{ localStorage.setItem('cxrkit-review-cam', on ? '1' : '0'); }catch(e){} }
  if(toggle){
    let on = true; try{ on = localStorage.getItem('cxrkit-review-cam') !== '0'; }catch(e){}
    showCam(on); toggle.addEventListener('change', () => showCam(toggle.checked));
  }
  if(cam){ cam.addEventListener('error', () => { cam.hidden = true;
    if(toggle){ toggle.disabled = true; } const n = document.getElementById('cam-note');
    if(n){ n.textContent = 'no Grad-CAM map available for this model'; } }); }
  async function save(index){
    msg.className = 'msg'; msg.textContent = 'saving...';
    try{
      const r = await fetch(d.saveUrl, {method:'POST', headers:{'Content-Type':'application/json',
        'X-Review-Key': d.key}, body: JSON.stringify({label_index: index})});
      const body = await r.json();
      if(!r.ok){ throw new Error(body.error || r.statusText); }
      document.querySelectorAll('.cls').forEach(b => b.classList.toggle('chosen', Number(b.dataset.index) === index));
      document.getElementById('status').textContent = 'reviewed';
      msg.textContent = 'Saved: ' + body.review.label + ' (by ' + body.review.reviewer + ')';
    }catch(e){ msg.className = 'msg error'; msg.textContent = 'Not saved: ' + e.message; }
  }
  document.querySelectorAll('.cls').forEach(b => b.addEventListener('click', () => save(Number(b.dataset.index))));
  const confirmBtn = document.getElementById('confirm');
  if(confirmBtn){ confirmBtn.addEventListener('click', () => save(Number(d.predicted))); }
  document.addEventListener('keydown', (e) => {
    if(e.ctrlKey || e.metaKey || e.altKey || /INPUT|TEXTAREA|SELECT/.test(e.target.tagName)){ return; }
    if(e.key === 'n'){ go(d.next); }
    else if(e.key === 'p'){ go(d.prev); }
    else if(e.key === 'l'){ go(d.list); }
    else if(e.key === 'g' && toggle && !toggle.disabled){ showCam(!toggle.checked); }
    else if((e.key === 'Enter' || e.key === 'c') && d.predicted !== undefined){ e.preventDefault(); save(Number(d.predicted)); }
    else if(/^[1-9]$/.test(e.key) && d.saveUrl){ const i = Number(e.key) - 1;
      if(i < Number(d.nclasses)){ save(i); } }
  });
})();
"""

_LOCAL_NOTE = {
    True: "Local-only: this page is served on {addr} and can be opened from this computer only.",
    False: "This page is served on {addr} to other computers: anyone who has its token (in the URL it was "
           "opened with) can read and label these studies; keep that URL private.",
}


def _shell(title: str, body: str, addr: str, local: bool, data: dict[str, str] | None = None) -> str:
    attrs = " ".join(f'data-{k}="{escape(str(v))}"' for k, v in (data or {}).items() if v is not None)
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)} - cxrkit review</title><style>{_CSS}</style></head>"
        f"<body {attrs}><header><strong>cxrkit review</strong><a href=\"/\">studies</a>"
        f"<span>{escape(title)}</span></header>"
        f'<div class=local id=local-note>{escape(_LOCAL_NOTE[local].format(addr=addr))}</div>'
        f"<main>{body}</main><script>{_SCRIPT}</script></body></html>"
    )


def _study_url(study_id: str) -> str:
    return "/study?" + urlencode({"id": study_id})


def _status_class(status: str) -> str:
    return {"reviewed": "status-reviewed", "predicted": "status-predicted"}.get(status, "status-not")


def list_page(
    studies: Sequence[Study], predicted: set[str], page: int, page_size: int, server: str, model: str | None,
    addr: str, local: bool,
) -> str:
    """The study list: one page of ``page_size`` studies with their status (no infer calls)."""
    total = len(studies)
    pages = max(1, -(-total // page_size))
    page = min(max(1, page), pages)
    shown = studies[(page - 1) * page_size : page * page_size]
    reviewed = sum(s.review is not None for s in studies)
    rows = []
    for n, s in enumerate(shown, start=(page - 1) * page_size + 1):
        status = s.status(s.id in predicted)
        r = s.review
        rows.append(
            f"<tr data-study=\"{escape(s.id)}\"><td>{n}</td><td><a href=\"{escape(_study_url(s.id))}\">"
            f"{escape(s.id)}</a></td><td class={_status_class(status)}>{escape(status)}</td>"
            f"<td>{_label_cell(r)}</td><td>{escape(r.reviewer or '') if r else ''}</td></tr>"
        )
    nav = []
    if page > 1:
        nav.append(f'<a id=prev-page href="/?page={page - 1}">&larr; previous</a>')
    nav.append(f"<span>page {page} of {pages}</span>")
    if page < pages:
        nav.append(f'<a id=next-page href="/?page={page + 1}">next &rarr;</a>')
    first_open = next((s for s in studies if s.review is None), None)
    start = (f'<p><a id=start href="{escape(_study_url(first_open.id))}">Review the first unreviewed study</a> '
             "(then <kbd>n</kbd>/<kbd>p</kbd> to move)</p>") if first_open else "<p>Every study is reviewed.</p>"
    body = (
        f"<p>{total} studies on <code>{escape(server)}</code>, {reviewed} reviewed"
        f"{f', model <code>{escape(model)}</code>' if model else ''}. Predictions are made when a study is opened.</p>"
        f"{start}<table id=studies><thead><tr><th>#</th><th>study</th><th>status</th><th>label</th>"
        f"<th>reviewer</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f"<p class=pages>{''.join(nav)}</p>"
    )
    data = {"next": f"/?page={page + 1}" if page < pages else None, "prev": f"/?page={page - 1}" if page > 1 else None}
    return _shell("studies", body, addr, local, data)


def _label_cell(review: Review | None) -> str:
    """A stored review label, escaped, marked when it cannot be used as a class name (it is not exported)."""
    if review is None:
        return ""
    if review.problem:
        return (f"{escape(review.label)} <span class=bad-label>(not a usable class name: {escape(review.problem)}; "
                "not exported)</span>")
    return escape(review.label)


def study_page(
    study: Study, prev: Study | None, nxt: Study | None, answer: Answer, key: str, addr: str, local: bool,
    status: str,
) -> str:
    """One study: the image with the Grad-CAM toggle, the probabilities and the review buttons."""
    q = quote(study.id, safe="")
    chosen = study.review.label if study.review else None
    buttons = []
    for i, (cls, p) in enumerate(zip(answer.classes, answer.probabilities)):
        css = "cls" + (" predicted" if i == answer.index else "") + (" chosen" if cls == chosen else "")
        key_hint = f"<kbd>{i + 1}</kbd>" if i < 9 else ""
        buttons.append(
            f'<button class="{css}" data-index={i} data-label="{escape(cls)}">{key_hint}'
            f"<span class=name>{escape(cls)}</span><span class=bar style=\"width:{max(1, round(p * 120))}px\"></span>"
            f"<span class=prob>{p * 100:.1f}%</span></button>"
        )
    review = study.review
    current = (f"Reviewed: {_label_cell(review)} by {escape(review.reviewer or 'unknown')}"
               f"{' at ' + escape(review.reviewed_at) if review.reviewed_at else ''}"
               f"{'; review it again to replace the stored label' if review.problem else ''}") if review else ""
    body = (
        f"<p><a href=\"/\">&larr; all studies</a> &middot; status: <span id=status>{escape(status)}</span></p>"
        "<div class=study><div class=viewer>"
        f'<img id=xray alt="study image" src="/image?id={q}">'
        f'<img id=cam alt="Grad-CAM overlay" src="/cam?id={q}"></div>'
        "<div class=panel>"
        f"<p>Prediction: <strong id=prediction>{escape(answer.label)}</strong> "
        f"(<span id=probability>{answer.probability * 100:.1f}%</span>)</p>"
        f"<div id=classes>{''.join(buttons)}</div>"
        f"<p id=calibration><small>{escape(_calibration_text(answer))}</small></p>"
        f'<button id=confirm class=confirm>Confirm {escape(answer.label)} <kbd>Enter</kbd></button>'
        f'<p><label><input type=checkbox id=cam-toggle checked> Grad-CAM overlay <kbd>g</kbd></label> '
        f"<span id=cam-note></span></p>"
        f"<div id=msg class=msg>{current}</div>"
        "<p><small><kbd>Enter</kbd>/<kbd>c</kbd> confirm &middot; <kbd>1</kbd>..<kbd>9</kbd> choose class &middot; "
        "<kbd>n</kbd>/<kbd>p</kbd> next/previous study &middot; <kbd>g</kbd> overlay &middot; <kbd>l</kbd> list"
        "</small></p></div></div>"
    )
    data = {
        "save-url": f"/review?id={q}", "key": key, "predicted": str(answer.index), "nclasses": str(len(answer.classes)),
        "next": _study_url(nxt.id) if nxt else None, "prev": _study_url(prev.id) if prev else None, "list": "/",
        "study": study.id,
    }
    return _shell(study.id, body, addr, local, data)


def _calibration_text(answer: Answer) -> str:
    if answer.calibration:
        return answer.calibration[:1].upper() + answer.calibration[1:] + "."
    return "Probabilities as the model was trained (not calibrated)."


def error_page(message: str, addr: str, local: bool) -> str:
    """A page showing one error message."""
    return _shell("error", f"<p class=error id=error>{escape(message)}</p><p><a href=\"/\">back</a></p>", addr, local)


def json_dumps(obj: object) -> bytes:
    """Compact JSON bytes."""
    return json.dumps(obj, separators=(",", ":")).encode()
