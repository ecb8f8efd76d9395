#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what it needs, then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Two pytest processes (pytest-xdist) share the modules, a module's tests staying together
# (--dist loadfile: its fixtures, servers and captures are made once). FASTPROXY_TEST_JOBS=1 runs one.
jobs=${FASTPROXY_TEST_JOBS:-2}
parallel=(-n "$jobs" --dist loadfile)
[ "$jobs" = 1 ] && parallel=(-p no:xdist)
pytest=(.venv/bin/python -m pytest -q -p no:cacheprovider)
# (Exit status 5 of a pass: arguments such as -k left it nothing to run.)
"${pytest[@]}" "${parallel[@]}" --durations=15 -m "not fuzz and not paced" "$@" || [ $? = 5 ]
# The tests that check the replay's rate per second, alone: beside another test process they would
# measure the neighbour's load (a starved replayer falls behind), not the pacing.
"${pytest[@]}" --durations=5 -m "paced and not fuzz" "$@" || [ $? = 5 ]
# The tests that start a proxy and relay or capture through it, once more with four data-plane
# workers in each proxy, on epoll (the first pass ran on the default: io_uring where allowed). Left
# out of this pass (they ran above with one worker): the modules whose
# subject is the replay side, the verdict or the API's forms, where the proxy only hosts the job.
second_pass_skips=(
  tests/test_api_forms.py tests/test_api_limits.py tests/test_api_security.py tests/test_storage_s3.py
  tests/test_output_files.py tests/test_replay_api.py tests/test_replay_pace.py
  tests/test_replay_password.py tests/test_replay_readonly_sqlmode.py tests/test_replay_report.py
  tests/test_replay_transactions.py tests/test_report_html.py tests/test_verdict.py tests/test_verdict_api.py
  tests/test_replay_resume.py tests/test_replay_resume_verdict.py tests/test_replay_dryrun.py
  tests/test_replay_internal_error.py tests/test_replay_without_process.py tests/test_replay_causal_slow.py
  tests/test_replay_tls.py tests/test_replay_pipeline.py tests/test_replay_read_order.py
  tests/test_replay_faithful.py tests/test_replay_sessions.py tests/test_replay_incomplete.py
  tests/test_replay_v1_capture.py tests/test_replay_session_flags.py tests/test_replay_open_statements.py
)
# (the shop workload of tests/test_replay_faithful.py, 49 and 98 connections, tests the replayer at
# scale, which the first pass did; tests/test_replay_faithful_mixed.py captures through four workers
# here, every kind of traffic at once. The replay modules of sessions, incomplete commands, version 1
# captures, session flags and open statements test how the replayer treats what was captured, the
# same whichever worker captured it; tests/test_replay_e2e.py and the mixed workload keep a capture
# through four workers replayed.)
FASTPROXY_TEST_WORKERS=4 FASTPROXY_TEST_IO=epoll "${pytest[@]}" "${parallel[@]}" --durations=10 \
  -m "proxy and not fuzz and not paced" \
  "${second_pass_skips[@]/#/--ignore=}" "$@" || [ $? = 5 ]
