// Loupe's side-by-side view (chat/ui/side_by_side.py): two answers next to each other while they stream
// (the arena's A and B, or a regenerated answer beside the one it is compared with), the choice between
// them under both, and in the arena who wrote which above each once voted. Two columns on a wide page,
// stacked on a narrow one. The server sends every text (in the user's language); the buttons click the
// buttons it issued, by id, so the server runs its own copy of each (chat/ui/routes.py). The answers'
// own stacked messages (stored as any answer is) are hidden while this shows; a view that can be closed
// (Compare) gives them back.
import { Button } from "@/components/ui/button";
import { Markdown } from "@/components/markdown";
import { useState } from "react";

const STEP_ID = /^[0-9a-f-]{36}$/;

export default function SideBySide() {
  const [sending, setSending] = useState(false);
  const [closed, setClosed] = useState(false);
  if (closed) {
    return null;
  }
  const hidden = props.columns
    .map((column) => column.answerId)
    .filter((id) => typeof id === "string" && STEP_ID.test(id))
    .map((id) => `.step:has([id="step-${id}"]) { display: none; }`)
    .join("\n");

  // A button's id is "<group>:<answer id>:<choice>" (chat/ui/choices.py); its group is the action's name.
  const choose = async (id) => {
    setSending(true);
    try {
      await callAction({ id, name: id.split(":")[0], payload: {} });
    } finally {
      setSending(false);
    }
  };

  return (
    <div className="loupe-side-by-side flex flex-col gap-3 w-full" data-side-by-side>
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
            data-column={column.side}
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
            <div className="side-by-side-answer" style={{ overflowWrap: "anywhere" }}>
              <Markdown allowHtml={false} latex={true}>
                {column.text.trim() /* as the chat shows a message: leading spaces would make a code block */}
              </Markdown>
            </div>
          </section>
        ))}
      </div>
      {props.votes.length ? (
        <div className="flex flex-col gap-2" data-choices>
          <span className="text-sm text-muted-foreground">{props.question}</span>
          <div className="flex flex-wrap gap-2" style={{ justifyContent: "center" }}>
            {props.votes.map((choice) => (
              <Button
                key={choice.id}
                variant={choice.chosen ? "default" : "outline"}
                size="sm"
                disabled={sending}
                onClick={() => choose(choice.id)}
              >
                {choice.label}
              </Button>
            ))}
          </div>
        </div>
      ) : null}
      {props.closeLabel ? (
        <div className="flex" style={{ justifyContent: "flex-end" }}>
          <Button variant="ghost" size="sm" data-close onClick={() => setClosed(true)}>
            {props.closeLabel}
          </Button>
        </div>
      ) : null}
    </div>
  );
}
