"""The analysis room: everything that reads run records and never trains.

store (records -> a pandas frame) -> cells, stats, power (paired tests, intervals, power) ->
stats_across, tables, plots, leaderboard, report (what a reader sees); compare and sensitivity
(the reproduction verdict and its noise measurement).
"""
