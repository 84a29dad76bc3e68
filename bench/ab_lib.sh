# Shared by ab_decode.sh and ab_sampling.sh (sourced, not run).

# ab_split_args ARGS...: "MODEL_DIR... -- LMX..." into the arrays `models` and `bins`; with
# either list empty, prints the calling script's header comment (its usage) and exits 2.
ab_split_args() {
  models=()
  while [[ $# -gt 0 && $1 != -- ]]; do models+=("$1"); shift; done
  [[ $# -gt 0 ]] && shift
  bins=("$@")
  if [[ ${#models[@]} -eq 0 || ${#bins[@]} -eq 0 ]]; then
    awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
  fi
}

# ab_check_bins NAME: every entry of `bins` is "[NAME=VALUE...] EXECUTABLE" (the variables
# are set for that binary's runs only), or NAME (the calling script) says which is not.
ab_check_bins() {
  local b w words
  for b in "${bins[@]}"; do
    read -r -a words <<<"$b"
    [[ ${#words[@]} -gt 0 && -x ${words[-1]} && ! ${words[-1]} =~ = ]] ||
      { echo "$1: \"$b\" does not end in an executable" >&2; exit 1; }
    for w in "${words[@]:0:${#words[@]}-1}"; do
      [[ $w =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || { echo "$1: \"$w\" in \"$b\" is not NAME=VALUE" >&2; exit 1; }
    done
  done
}

# ab_means RUNS N KEY_WIDTH: each key's mean per binary and its ratio to binary [0]'s. RUNS
# holds one run a line, "KEY<TAB>BINARY<TAB>VALUE" (a KEY may hold tabs; "failed" values
# count in no mean); N is the number of binaries.
ab_means() {
  python3 - "$1" "$2" "$3" <<'PY'
import collections, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    *key, i, v = line.rstrip("\n").split("\t")
    key = "  ".join(key)
    runs[key, int(i)]
    if v != "failed":
        runs[key, int(i)].append(float(v))
n, width = int(sys.argv[2]), int(sys.argv[3])
print()
for key in dict.fromkeys(k for k, _ in runs):
    means = [sum(runs[key, i]) / len(runs[key, i]) if runs[key, i] else None for i in range(n)]
    cells = []
    for mean in means:
        if mean is None:
            cells.append("%14s" % "-")
        elif means[0]:
            cells.append("%7.1f %5.3fx" % (mean, mean / means[0]))
        else:
            cells.append("%14.1f" % mean)
    print("%-*s %4s %s" % (width, key, "mean", " ".join(cells)))
PY
}
