#!/usr/bin/env bash
# Markdown table of final average accuracies (after task 5, mean over the five tasks' test
# sets), mean ± sample std over seeds, beside Hsu et al. 2018 (Table 2, mean of 10 runs).
# Usage: table.sh results.jsonl (records of `mnemo eval --stage --label`, as run.sh writes them)
set -euo pipefail
awk '
BEGIN {
  pub["domain","finetune"] = "55.16"; pub["domain","ewc"] = "58.85"; pub["domain","online-ewc"] = "57.33"
  pub["domain","replay"] = "95.16"; pub["domain","joint"] = "98.59"
  pub["class","finetune"] = "19.71"; pub["class","ewc"] = "19.80"; pub["class","online-ewc"] = "19.77"
  pub["class","replay"] = "90.78"; pub["class","joint"] = "97.53"
  split("finetune ewc online-ewc replay er-ace derpp joint", order, " ")
  name["finetune"] = "fine-tuning (Adam)"; name["ewc"] = "EWC"; name["online-ewc"] = "online EWC"
  name["replay"] = "replay, 1100 examples"; name["joint"] = "joint training"
  name["er-ace"] = "ER-ACE, 1100 examples"; name["derpp"] = "DER++, 1100 examples"
}
/"stage":5,/ {
  match($0, /"scenario":"[a-z]+"/); sc = substr($0, RSTART + 12, RLENGTH - 13)
  match($0, /"method":"[a-z-]+"/); m = substr($0, RSTART + 10, RLENGTH - 11)
  match($0, /"seed":[0-9]+/); seed = substr($0, RSTART + 7, RLENGTH - 7)
  match($0, /"accuracy":[0-9.eE+-]+/); a = substr($0, RSTART + 11, RLENGTH - 11)
  k = sc SUBSEP m
  if (!((k, seed) in acc)) { seeds[k] = seeds[k] " " seed }
  acc[k, seed] += a; cnt[k, seed]++
}
END {
  for (k in seeds) {
    split(k, parts, SUBSEP); sc = parts[1]; m = parts[2]
    ns = split(seeds[k], list, " ")
    for (i = 1; i <= ns; i++) {
      x = 100 * acc[k, list[i]] / cnt[k, list[i]]
      n[sc, m]++; sum[sc, m] += x; sq[sc, m] += x * x
    }
  }
  print "| method | domain-IL (mnemo) | domain-IL (Hsu et al.) | class-IL (mnemo) | class-IL (Hsu et al.) |"
  print "|---|---:|---:|---:|---:|"
  for (j = 1; j <= 7; j++) {
    m = order[j]
    if (n["domain", m] + n["class", m] == 0) continue
    line = "| " name[m]
    for (q = 1; q <= 2; q++) {
      sc = (q == 1) ? "domain" : "class"
      if (n[sc, m] == 0) { cell = "–" }
      else {
        mean = sum[sc, m] / n[sc, m]
        var = (n[sc, m] > 1) ? (sq[sc, m] - n[sc, m] * mean * mean) / (n[sc, m] - 1) : 0
        cell = sprintf("%.2f ± %.2f (n=%d)", mean, sqrt(var > 0 ? var : 0), n[sc, m])
      }
      line = line " | " cell " | " ((sc, m) in pub ? pub[sc, m] : "–")
    }
    print line " |"
  }
}' "$1"
