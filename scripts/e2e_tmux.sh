#!/usr/bin/env bash
# End-to-end test of the full-screen chat as a user starts it (no --router: the shipped
# router, routers/buddy-router.json, with no fallback), driving the real binary inside tmux:
# type a prompt, see tokens stream, check the routing panel shows exactly k executed
# routable layers plus the two fixed ones per step, press '-' twice mid-reply and see the
# slider move and the next steps use the smaller k, resize 80x24 -> 160x48, stop the reply
# with Esc, /save, quit with Ctrl-D and find the terminal restored; then check SIGTERM
# restores it too.
#
#   scripts/e2e_tmux.sh [BUDDY_BINARY]     (default .build/release/buddy)
#
# Screens are kept in $BUDDY_E2E_OUT (default /tmp/buddy-e2e): screen-80x24.txt and
# screen-160x48.txt. Exit status 0 when every check passes.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${1:-$root/.build/release/buddy}"
out="${BUDDY_E2E_OUT:-/tmp/buddy-e2e}"
mkdir -p "$out"
work="$(mktemp -d /tmp/buddy-e2e-work.XXXXXX)"
sock="buddy-e2e-$$"
tm() { tmux -L "$sock" "$@"; }
cleanup() {
  tm kill-server >/dev/null 2>&1 || true
  sleep 0.2
  rm -rf "$work" 2>/dev/null || true
  rm -f "${TMUX_TMPDIR:-/tmp}/tmux-$(id -u)/$sock"
}
trap cleanup EXIT

fail() {
  echo "E2E FAIL: $*" >&2
  echo "--- screen ---" >&2
  tm capture-pane -p -t e2e >&2 2>/dev/null || true
  exit 1
}
command -v tmux >/dev/null || fail "tmux is not installed (scripts/setup.sh installs it)"
[ -x "$bin" ] || fail "no buddy binary at $bin (swift build -c release)"
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"

screen() { tm capture-pane -p -t e2e; }
# wait_for REGEX SECONDS: until the screen matches.
# True once the screen matches, false after t seconds (no failure).
seen() {
  local re="$1" t="${2:-20}" i=0
  while [ "$i" -lt $((t * 10)) ]; do
    if screen | grep -qE -- "$re"; then return 0; fi
    sleep 0.1; i=$((i + 1))
  done
  return 1
}
wait_for() {
  seen "$1" "${2:-20}" || fail "timed out after ${2:-20}s waiting for /$1/"
}

# Executed routable layers per non-empty panel column, newest last, one per line; -1 for a
# column where a fixed layer (the first or the last) did not run.
# The panel's rows are "NN* ▀▄█·...┆bar": glyphs are mapped to ASCII first so awk can count
# columns in any locale.
panel_ks() {
  screen | sed -e 's/│/|/g' -e 's/█/B/g' -e 's/▀/U/g' -e 's/▄/D/g' -e 's/·/./g' -e 's/┆/!/g' | awk '
    {
      p = 0
      for (i = length($0); i > 0; i--) if (substr($0, i, 1) == "|") { p = i; break }
      if (p == 0) next
      s = substr($0, p + 1)
      if (s !~ /^[ 0-9][0-9][* ] /) next
      e = index(s, "!"); if (e == 0) next
      n++; label[n] = substr(s, 1, 2) + 0; grid[n] = substr(s, 5, e - 5)
    }
    END {
      if (n < 2) exit 1
      compact = (label[2] - label[1] == 2)
      L = compact ? label[n] + 2 : label[n] + 1
      w = length(grid[1])
      for (c = 1; c <= w; c++) {
        k = 0; fixed = 0; blank = 1
        for (r = 1; r <= n; r++) {
          g = substr(grid[r], c, 1); up = label[r]
          if (g != " ") blank = 0
          if (compact) {
            if ((g == "B" || g == "U") && up > 0 && up < L - 1) k++
            if ((g == "B" || g == "D") && up + 1 > 0 && up + 1 < L - 1) k++
            if ((g == "B" || g == "U") && up == 0) fixed++
            if ((g == "B" || g == "D") && up + 1 == L - 1) fixed++
          } else {
            if (g == "B" && up > 0 && up < L - 1) k++
            if (g == "B" && (up == 0 || up == L - 1)) fixed++
          }
        }
        if (!blank) print (fixed == 2 ? k : -1)
      }
    }'
}

# A capture can catch curses half-way through a frame; read until every column is a
# budget's k (28, 27 or 25 here), at most 20 tries.
panel_ks_whole() {
  local i ks
  for i in $(seq 20); do
    ks="$(panel_ks)" || { sleep 0.05; continue; }
    if ! echo "$ks" | grep -qvE '^(28|27|25)$'; then echo "$ks"; return 0; fi
    sleep 0.05
  done
  fail "the panel never showed a whole frame: $(echo $ks)"
}

# A clean environment, except sanitizer options (so a sanitizer run can configure the binary).
tm -f /dev/null new-session -d -s e2e -x 80 -y 24 "env -i PATH=$PATH HOME=$work TERM=xterm-256color LANG=C.UTF-8 PS1='$ ' ASAN_OPTIONS='${ASAN_OPTIONS:-}' TSAN_OPTIONS='${TSAN_OPTIONS:-}' bash --norc --noprofile"
tm set-option -t e2e status off >/dev/null
sleep 0.3
tm send-keys -t e2e "cd $work && stty -g > stty.before" Enter
# Steering off: the checks below count the budget's exact k per step (steering runs other counts:
# every layer after a sentence end, k + 3, or k − 1 and fewer); the default, steered, is checked in step 7.
tm send-keys -t e2e "'$bin' --max-tokens 400 --steering off --model '${BUDDY_MODEL:-$root/models/SmolLM2-135M-Instruct.Q4_1.gguf}'; echo EXIT=\$?" Enter
wait_for "message, or /help" 30
screen | grep -q "100%  28/28 layers" || fail "slider should start at 100% and 28/28 layers"
# The shipped router is in use: its name in the status bar, and no fallback notice.
screen | grep -qE "│ buddy 100%" || fail "the status bar should name the shipped router (buddy)"
screen | grep -q "unavailable" && fail "the shipped router should load without a fallback"

# 1. Type a prompt; tokens stream; every step runs all 28 routable layers.
# (A counting prompt: the reply is long, so the budget change lands mid-reply.)
tm send-keys -t e2e -l "List the numbers from 1 to 100, separated by commas."
tm send-keys -t e2e Enter
wait_for "Esc stop" 20
i=0
until [ "$(panel_ks | wc -l)" -ge 8 ]; do
  i=$((i + 1)); [ "$i" -lt 100 ] || fail "fewer than 8 steps reached the panel"
  sleep 0.1
done
before="$(panel_ks_whole)"
echo "$before" | grep -qv '^28$' && fail "at budget 100% every step should run 28 routable layers: $(echo $before)"
words1="$(screen | cut -c1-50 | wc -w)"

# 2. '-' twice mid-reply: the slider shows 90% = 25/28, and the following steps run 25.
ctx1="$(screen | grep -oE 'ctx [0-9]+' | tail -n 1 | tr -dc 0-9)"
tm send-keys -t e2e "-"
tm send-keys -t e2e "-"
wait_for " 90%  25/28 layers" 5
mid="$(panel_ks_whole)"
echo "$mid" | awk 'NR > 1 && $1 > prev { bad = 1 } { prev = $1 } END { exit bad }' \
  || fail "k went back up right after the budget was lowered: $(echo $mid)"
# Wait until the newest five steps ran under the new budget (the reply may end meanwhile).
i=0
while [ "$(panel_ks_whole | tail -n 5 | sort -u)" != "25" ]; do
  i=$((i + 1)); [ "$i" -lt 50 ] || fail "after '-' twice the newest steps should run 25 routable layers: $(panel_ks | tr '\n' ' ')"
  sleep 0.1
done
after="$(panel_ks_whole)"
echo "$after" | awk 'NR > 1 && $1 > prev { bad = 1 } { prev = $1 } END { exit bad }' \
  || fail "k went back up after the budget was lowered: $(echo $after)"
ctx2="$(screen | grep -oE 'ctx [0-9]+' | tail -n 1 | tr -dc 0-9)"
[ "$ctx2" -gt "$ctx1" ] || fail "no tokens streamed after the budget change (context $ctx1 -> $ctx2)"
screen > "$out/screen-80x24.txt"

# 3. Resize to 160x48: one row per layer, the panel still counts 25 for the newest steps.
tm resize-window -t e2e -x 160 -y 48
wait_for "recommended zone 80–100%" 5
sleep 0.5
screen | grep -qE "│29\* " || fail "at 160x48 the panel should show one row per layer (29*)"
big="$(panel_ks_whole)"
[ "$(echo "$big" | tail -n 3 | sort -u)" = "25" ] || fail "at 160x48 the newest steps should run 25: $(echo $big)"
screen > "$out/screen-160x48.txt"

# 4. Esc stops a reply and keeps it (a new reply if the last one has ended). A reply can end on
# its own between looking and pressing Esc; then Esc stops nothing, so try again with a new one.
stopped=no
for attempt in 1 2 3; do
  if ! screen | grep -q "Esc stop"; then
    tm send-keys -t e2e -l "Tell me everything you know about the history of Rome."
    tm send-keys -t e2e Enter
    wait_for "Esc stop" 20
    sleep 0.5
  fi
  tm send-keys -t e2e Escape
  if seen "· stopped" 5; then stopped=yes; break; fi
done
[ "$stopped" = yes ] || fail "Esc did not stop a streaming reply in three tries"
screen | grep -q "Esc stop" && fail "the status bar still says a reply is streaming"
screen | grep -qE "buddy 100%→(95%→)?90% · " || fail "the first reply's meta line should list the budgets 100% then 90%"

# 5. /save writes JSON atomically.
tm send-keys -t e2e -l "/save $work/chat.json"
tm send-keys -t e2e Enter
wait_for "saved to $work/chat.json" 5
grep -q '"format" : "buddy-chat"' "$work/chat.json" || fail "chat.json is not a buddy chat file"
grep -q '"stop_reason" : "cancelled"' "$work/chat.json" || fail "chat.json should record the stopped reply"
grep -q '"role" : "assistant"' "$work/chat.json" || fail "chat.json should hold the assistant reply"
ls -a "$work" | grep -q '\.tmp-' && fail "a temporary file was left next to chat.json"

# 6. Ctrl-D on the empty input quits with status 0 and the terminal is as it was.
tm send-keys -t e2e C-d
wait_for "EXIT=0" 5
[ "$(tm display -p -t e2e '#{alternate_on}')" = "0" ] || fail "still on the alternate screen after quitting"
tm send-keys -t e2e "stty -g > stty.after; cmp -s stty.before stty.after && echo STTY-SAME || echo STTY-DIFFERENT" Enter
wait_for "STTY-(SAME|DIFFERENT)" 5
screen | grep -q "STTY-SAME" || fail "terminal modes differ after quitting"

# 7. Default options (the router steered along the reply), then SIGTERM while the chat is
# open also restores the terminal (status 143).
tm send-keys -t e2e "clear; sh -c 'echo \$\$ > buddy.pid; exec \"\$0\" --model \"\$1\"' '$bin' '${BUDDY_MODEL:-$root/models/SmolLM2-135M-Instruct.Q4_1.gguf}'; echo EXIT=\$?" Enter
wait_for "message, or /help" 30
screen | grep -qE "│ buddy\+lead 100%" || fail "by default the status bar should name the steered shipped router (buddy+lead)"
kill -TERM "$(cat "$work/buddy.pid")"
wait_for "EXIT=143" 5
tm send-keys -t e2e "stty -g > stty.after2; cmp -s stty.before stty.after2 && echo TERM-STTY-SAME || echo TERM-STTY-DIFFERENT" Enter
wait_for "TERM-STTY-(SAME|DIFFERENT)" 5
screen | grep -q "TERM-STTY-SAME" || fail "terminal modes differ after SIGTERM"
[ "$(tm display -p -t e2e '#{alternate_on}')" = "0" ] || fail "still on the alternate screen after SIGTERM"

echo "E2E OK: panel k per step before: $(echo $before | tr '\n' ' ')"
echo "E2E OK: just after '-' twice: $(echo $mid | tr '\n' ' ')"
echo "E2E OK: after '-' twice: $(echo $after | tr '\n' ' ')"
echo "=== 80x24 ($out/screen-80x24.txt) ==="
cat "$out/screen-80x24.txt"
echo "=== 160x48 ($out/screen-160x48.txt) ==="
cat "$out/screen-160x48.txt"
