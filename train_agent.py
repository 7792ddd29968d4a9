"""Agentic RL: GRPO/CISPO over multi-turn tool use. The model answers each prompt in episodes: it may call the
tools its system turn offers (the demo's calculator, fact lookup and unit converter, or any MCP server's), the
calls run in a sandbox, their results come back as a tool turn, and it goes on until it answers (at most
--max_tool_turns model turns). The final answer is checked against the row's target; valid calls and an answer
earn --tool_format_weight; tool results are context, never trained on.

    python train_agent.py                                   # out/tool_sft_512.pth + the demo's agent prompts
    python train_agent.py --tools calculator --max_tool_turns 2
    python train_agent.py --tools "" --mcp "python scripts/mcp_demo_tools.py"    # the tools of an MCP server

Reads minimind's agent RL jsonl: {"conversations": [{"role": "system", "content": ..., "tools": "[json
schemas]"}, {"role": "user", ...}], "answer": target}; writes out/agent_<hidden>[_moe].pth.

It is train_grpo.py with tools on: the same loop, flags and losses (see `python train_grpo.py --help`);
model/agent.py holds the episode rollout and its scoring.
"""
import train_grpo


def main():
    train_grpo.main(description=__doc__, data="agent_prompts", from_weight="tool_sft", save_weight="agent",
                    tools="all", format_weight=0.0, length_weight=0.0, max_new_tokens=128, max_tool_turns=3)


if __name__ == "__main__":
    main()
