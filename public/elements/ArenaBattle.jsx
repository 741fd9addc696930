// Loupe's arena battle (chat/ui/arena.py): answers A and B side by side while they stream, the vote
// row under both, and who wrote which above each once voted. Two columns on a wide page, stacked on a narrow one.
// The server sends every text (in the user's language); the buttons click the vote buttons it issued,
// by id, so the server runs its own copy of each (chat/ui/routes.py). The stacked copies of the two
// answers (stored as any answer is) are hidden while this renders.
import { Button } from "@/components/ui/button";
import { Markdown } from "@/components/markdown";
import { useState } from "react";

const STEP_ID = /^[0-9a-f-]{36}$/;

export default function ArenaBattle() {
  const [sending, setSending] = useState(false);
  const hidden = props.columns
    .map((column) => column.answerId)
    .filter((id) => typeof id === "string" && STEP_ID.test(id))
    .map((id) => `.step:has([id="step-${id}"]) { display: none; }`)
    .join("\n");

  const vote = async (id) => {
    setSending(true);
    try {
      await callAction({ id, name: "vote", payload: {} });
    } finally {
      setSending(false);
    }
  };

  return (
    <div className="loupe-arena flex flex-col gap-3 w-full" data-arena>
      <style>{hidden}</style>
      <div
        style={{
          display: "grid",
          gridTemplateColumns: "repeat(auto-fit, minmax(min(100%, 18rem), 1fr))",
          gap: "0.75rem",
        }}
      >
        {props.columns.map((column) => (
          <section
            key={column.side}
            data-arena-side={column.side}
            data-answer-id={column.answerId || undefined}
            data-state={column.state}
            className="rounded-lg border bg-card p-3 flex flex-col gap-2"
            style={{ minWidth: 0 }}
          >
            <header className="flex items-center justify-between gap-2">
              <span className="font-semibold">
                {column.title}
                {column.contender ? ` · ${column.contender}` : ""}
              </span>
              {column.status ? <span className="text-sm text-muted-foreground">{column.status}</span> : null}
            </header>
            <div className="arena-answer" style={{ overflowWrap: "anywhere" }}>
              <Markdown allowHtml={false} latex={true}>
                {column.text}
              </Markdown>
            </div>
          </section>
        ))}
      </div>
      {props.votes.length ? (
        <div className="flex flex-col gap-2" data-arena-votes>
          <span className="text-sm text-muted-foreground">{props.question}</span>
          <div className="flex flex-wrap gap-2" style={{ justifyContent: "center" }}>
            {props.votes.map((choice) => (
              <Button
                key={choice.id}
                variant={choice.chosen ? "default" : "outline"}
                size="sm"
                disabled={sending}
                onClick={() => vote(choice.id)}
              >
                {choice.label}
              </Button>
            ))}
          </div>
        </div>
      ) : null}
    </div>
  );
}
