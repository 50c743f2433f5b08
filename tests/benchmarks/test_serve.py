from benchmarks.serve import goal_lines


def row(clients: int, tps: float) -> dict:
    return {"clients": clients, "tokens_per_s": tps}


def test_goal_lines_compare_eight_clients_with_one_and_with_llama_server() -> None:
    rows = {"lmstack fp32": [row(1, 20.0), row(8, 70.0)], "llama.cpp llama-server": [row(1, 90.0), row(8, 60.0)]}
    (head, line) = goal_lines(rows)
    assert head.startswith("**Goals**")
    assert "3.50× one client (met)" in line and "1.17× llama-server's 60.0 tok/s (met)" in line


def test_goal_lines_say_missed_and_leave_out_the_peer_when_it_did_not_run() -> None:
    (_, line) = goal_lines({"lmstack int8": [row(1, 30.0), row(8, 60.0)]})
    assert "2.00× one client (missed)" in line and "llama-server" not in line
