"""Export the bundled price file once: python data/export_stocks.py

Needs `pip install bokeh_sampledata==2026.1` (not a runtime dependency).
Writes data/stocks.csv exactly as the source supplies it: open/high/low/close
and volume are NOT split-adjusted; the data module adjusts them with
adj_close/close (`data.adjust_column`, on by default).
"""

from pathlib import Path

import bokeh_sampledata.stocks as stocks

COLUMNS = ["date", "ticker", "open", "high", "low", "close", "adj_close", "volume"]

frame = stocks.data
frame = frame[frame.ticker.isin(["AAPL", "IBM", "MSFT"])][COLUMNS]
frame = frame.sort_values(["ticker", "date"])
out = Path(__file__).with_name("stocks.csv")
frame.to_csv(out, index=False, date_format="%Y-%m-%d", float_format="%.10g")
print(f"wrote {out}: {len(frame)} rows")
