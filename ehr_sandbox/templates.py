"""The few HTML pages of the sandbox EHR, inline (no template folder to package, no external assets)."""
from __future__ import annotations

STYLE = """<style>
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1f2328;background:#f6f7f9}
header{background:#234;color:#fff;padding:10px 18px;display:flex;gap:16px;align-items:center}
header a{color:#fff;text-decoration:none;font-weight:600}
header .user{margin-left:auto;opacity:.85;font-size:13px}
main{padding:18px}
table{border-collapse:collapse;background:#fff;min-width:640px}
th,td{text-align:left;padding:6px 12px;border-bottom:1px solid #e3e6ea}
th{background:#eef1f4;font-weight:600}
a{color:#2d6cdf}
.card{background:#fff;border:1px solid #e3e6ea;border-radius:6px;padding:14px 18px;margin-bottom:14px}
.chart{display:flex;gap:16px;align-items:flex-start}
.chart .body{flex:1}
iframe#prm-sidebar{height:calc(100vh - 90px);border:1px solid #cfd5dc;border-radius:6px;background:#fff}
input,select,button{font:inherit;padding:5px 8px}
.muted{color:#656d76}
.error{color:#b3261e}
</style>"""

HEADER = """<header><a href="/">Sandbox EHR</a><span class="muted">profile: {{ profile }}</span>
<span class="user">signed in as {{ user }}</span></header>"""

ERROR_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Sandbox EHR</title>""" + STYLE + """
</head><body><main><div class="card"><h1>Authorization error</h1>
<p class="error" id="error">{{ message }}</p>
<p class="muted">The request was not redirected back to the app because its client or redirect_uri could not be
trusted.</p></div></main></body></html>"""

PICKER_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Sandbox EHR</title>""" + STYLE + """
</head><body><main><div class="card"><h1>Sign in to Sandbox EHR</h1>
<p><b>{{ client_id }}</b> asks for: <code>{{ scopes | join(" ") }}</code></p>
<form method="post" action="/oauth/authorize" id="picker">
{% for k, v in hidden %}<input type="hidden" name="{{ k }}" value="{{ v }}">{% endfor %}
<p>User: <b id="user">{{ user }}</b></p>
{% if patients %}<p><label>Patient:
<select name="patient_id" id="patient_id">{% for p in patients %}
<option value="{{ p.id }}">{{ p.name }} ({{ p.birth_date }}, {{ p.mrn }})</option>{% endfor %}
</select></label></p>{% endif %}
<button type="submit" name="decision" value="allow" id="allow">Allow</button>
<button type="submit" name="decision" value="deny" id="deny">Deny</button>
</form></div></main></body></html>"""

PATIENT_LIST = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Sandbox EHR</title>""" + STYLE + """
</head><body>""" + HEADER + """<main>
<form method="get" action="/" class="card"><label>Find patient by name
<input name="name" value="{{ name }}" autofocus></label> <button type="submit">Search</button></form>
<table id="patients"><thead><tr><th>Name</th><th>Birth date</th><th>MRN</th></tr></thead><tbody>
{% for p in patients %}<tr><td><a href="/chart/{{ p.id }}">{{ p.name }}</a></td><td>{{ p.birth_date }}</td>
<td>{{ p.mrn }}</td></tr>{% else %}<tr><td colspan="3" class="muted">No patients found.</td></tr>{% endfor %}
</tbody></table></main></body></html>"""

CHART = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Sandbox EHR</title>""" + STYLE + """
</head><body>""" + HEADER + """<main class="chart"><div class="body">
<div class="card" id="chart-header"><h1 id="patient-name">{{ patient.name }}</h1>
<p>Born <span id="patient-dob">{{ patient.birth_date }}</span> &middot; MRN {{ patient.mrn }}
&middot; <span class="muted">{{ patient.id }}</span></p>
{% if encounter %}<p class="muted">Current encounter: Encounter/{{ encounter }}</p>{% endif %}</div>
<p><a href="/">&larr; Patient list</a></p></div>
<iframe id="prm-sidebar" name="prm-sidebar" title="PRM" style="width:360px" src="{{ src }}"
 allow="clipboard-write; fullscreen" referrerpolicy="origin"></iframe>
</main></body></html>"""
