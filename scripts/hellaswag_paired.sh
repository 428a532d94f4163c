#!/usr/bin/env bash
# Paired comparison of two methods on the same HellaSwag tasks, per budget, from the
# per-task files of `buddy eval hellaswag --items FILE` (any number of files; rows of the
# same method, budget and task must agree).
#
#   scripts/hellaswag_paired.sh buddy shortgpt items-a.csv items-b.csv
#
# For each budget both methods were scored at, on the tasks both saw: accuracy of each,
# the difference A − B, its standard error from the per-task differences (which is what
# sampling noise means for two methods scored on the same tasks; it is smaller than the
# s.e. of one accuracy when the methods agree on most tasks), the difference in those
# standard errors, and the discordant tasks (A right and B wrong, A wrong and B right).
set -euo pipefail
if [ $# -lt 3 ]; then
    echo "usage: $0 METHOD_A METHOD_B ITEMS.csv [ITEMS.csv ...]" >&2
    exit 2
fi
a="$1"; b="$2"; shift 2
for f in "$@"; do [ -r "$f" ] || { echo "$0: cannot read '$f'" >&2; exit 1; }; done
awk -F, -v A="$a" -v B="$b" '
    { sub(/\r$/, "") }
    FNR == 1 { if ($0 != "method,budget,kv_policy,task,gold,chosen" && $0 != "method,budget,kv_policy,task,gold,chosen,stand_ins") { print FILENAME ": not a buddy eval hellaswag --items file" > "/dev/stderr"; bad = 1; exit 1 } next }
    # Rows with stand-ins on count as the method "NAME+stand-ins" (files from before have none).
    $7 == "on" { $1 = $1 "+stand-ins" }
    $1 == A || $1 == B {
        key = $1 SUBSEP ($2 + 0) SUBSEP $4
        ok = ($5 == $6) ? 1 : 0
        if ((key in right) && right[key] != ok) { print "conflicting results for " $1 " at " $2 ", task " $4 > "/dev/stderr"; bad = 1; exit 1 }
        right[key] = ok; budgets[$2 + 0] = 1; tasks[$4] = 1
    }
    END {
        if (bad) exit 1
        print "| budget | n | " A " | " B " | difference | paired s.e. | difference / s.e. | " A " only right | " B " only right |"
        print "|---|---|---|---|---|---|---|---|---|"
        nb = 0
        for (x in budgets) order[++nb] = x
        for (i = 1; i <= nb; i++) for (j = i + 1; j <= nb; j++) if (order[j] > order[i]) { t = order[i]; order[i] = order[j]; order[j] = t }
        for (i = 1; i <= nb; i++) {
            x = order[i]; n = 0; sa = 0; sb = 0; s = 0; ss = 0; onlyA = 0; onlyB = 0
            for (t in tasks) {
                ka = A SUBSEP x SUBSEP t; kb = B SUBSEP x SUBSEP t
                if (!(ka in right) || !(kb in right)) continue
                d = right[ka] - right[kb]
                n++; sa += right[ka]; sb += right[kb]; s += d; ss += d * d
                if (d > 0) onlyA++; if (d < 0) onlyB++
            }
            if (n < 2) continue
            mean = s / n; se = sqrt((ss / n - mean * mean) / (n - 1))
            printf "| %.2f | %d | %.4f | %.4f | %+.4f | %.4f | %s | %d | %d |\n", x, n, sa / n, sb / n, mean, se, (se > 0 ? sprintf("%+.1f", mean / se) : "-"), onlyA, onlyB
        }
    }' "$@"
