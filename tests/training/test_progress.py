from dorl.training.progress import NullReporter, RecordingReporter, Reporter, RichReporter


def drive(reporter: Reporter) -> None:
    reporter.start("seg", 2)
    reporter.advance("seg", loss=0.5)
    reporter.advance("seg", loss=0.25)
    reporter.finish("seg")
    reporter.start("tokens", 0)
    reporter.finish("tokens")
    reporter.note("done")


def test_recording_reporter_keeps_every_call() -> None:
    reporter = RecordingReporter()
    drive(reporter)
    assert reporter.tasks() == ["seg", "tokens"] and reporter.notes == ["done"]
    assert reporter.events[1] == ("advance", "seg", {"loss": 0.5, "steps": 1})


def test_null_and_rich_reporters_accept_the_protocol(capsys) -> None:
    drive(NullReporter())
    with RichReporter() as rich:
        drive(rich)
    assert "done" in capsys.readouterr().err
