"""Pure decisions: functions of records, an event or request, config and `now`. No I/O."""
