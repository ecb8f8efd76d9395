"""The verdict of a replay: result fingerprints compared (verdict.py, classify.py), latency per digest
(_latency.pyx), plans (explain.py), A/B replays (ab.py), files and text (files.py), the HTML page
(html.py); session.py ties them to a replay run, observe.py to the engine."""
